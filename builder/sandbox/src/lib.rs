//! The sandbox RUN steps execute in (and, later, `kiln run`).
//!
//! A [`Spec`] says what to run and over which tree: an overlayfs of read-only snapshot
//! directories with a fresh upper dir ([`RootSpec::Overlay`]), or a directory holding a
//! full copy of the tree ([`RootSpec::Dir`], the copy snapshotter for machines without
//! overlayfs). A [`Runtime`] runs it; [`LinuxRuntime`] does so in new mount, pid, uts and
//! ipc (and optionally network) namespaces with `pivot_root` into the tree. All the
//! Linux-specific, `unsafe` code is in [`linux`].
//!
//! Mount points the sandbox had to create in the tree (`/proc` in an image without one,
//! `/etc/resolv.conf`, a secret's `/run/secrets/ID`, ...) are recorded as [`Stubs`] and
//! removed from the step's diff afterwards, so they never reach a layer.
//!
//! [`mounts::plan`] turns a [`Spec`] into the ordered list of mounts the Linux runtime
//! makes, so that their assembly is tested without root; [`fake::RecordingRuntime`] is a
//! [`Runtime`] that records the specs it is given and touches nothing, for the tests of
//! code that runs steps.
//!
//! [`container`] runs the same sandbox as a long-lived container (`kiln run`, `exec`):
//! stdio, ptys, an optional init, signals, exit statuses as Docker reports them.
#![deny(missing_docs)]

pub mod beneath;
pub mod container;
pub mod copy;
mod error;
pub mod fake;
pub mod linux;
pub mod mounts;
mod seccomp;
mod user;

use std::collections::VecDeque;
use std::fs;
use std::io::{self, BufRead};
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use error::{Result, SandboxError};
pub use user::{User, resolve_user};

use error::IoContext;

/// Network of a sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NetworkMode {
    /// The host's network namespace.
    Host,
    /// A private network namespace with only loopback, up.
    None,
}

/// The root filesystem of a sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum RootSpec {
    /// overlayfs at [`Spec::merged`]: read-only `lowers` (top first) and a writable `upper`
    /// (`work` is overlayfs' work dir, on the same filesystem).
    Overlay {
        /// Lower directories, top first.
        lowers: Vec<PathBuf>,
        /// The upper directory: the step's diff.
        upper: PathBuf,
        /// overlayfs' work directory.
        work: PathBuf,
    },
    /// [`Spec::merged`] already holds the whole tree (copy snapshotter).
    Dir,
}

/// A mount of a sandbox. Targets are absolute paths inside the sandbox.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MountSpec {
    /// A host file or directory (a context directory, a cache directory, a copied tree).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Target.
        target: String,
        /// Read-only.
        readonly: bool,
    },
    /// A path inside a tree of snapshot layers (`--mount=type=bind,from=STAGE`); with
    /// `rw`, writes go to a throw-away upper dir.
    Layers {
        /// Lower directories, top first (empty: an empty tree).
        lowers: Vec<PathBuf>,
        /// Upper and work directories for a writable mount.
        rw: Option<(PathBuf, PathBuf)>,
        /// Path inside the tree.
        subpath: String,
        /// Target.
        target: String,
        /// Read-only.
        readonly: bool,
    },
    /// An empty tmpfs.
    Tmpfs {
        /// Target.
        target: String,
        /// Size limit in bytes.
        size: Option<u64>,
    },
    /// A secret: the file is copied into a private tmpfs and bound read-only.
    Secret {
        /// The secret's file on the host.
        source: PathBuf,
        /// Target.
        target: String,
        /// File mode.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
}

/// Everything the init process needs, written as JSON for it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// How the root filesystem is made.
    pub root: RootSpec,
    /// Where the root filesystem is (overlay mount point, or the copied tree).
    pub merged: PathBuf,
    /// A directory for the init process's own mount points.
    pub scratch: PathBuf,
    /// argv.
    pub args: Vec<String>,
    /// `KEY=value` environment.
    pub env: Vec<String>,
    /// Working directory inside the sandbox.
    pub cwd: String,
    /// User id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Network.
    pub network: NetworkMode,
    /// Host name.
    pub hostname: String,
    /// `--security=insecure`: every capability, no seccomp filter, no masked or read-only
    /// paths under `/proc` and `/sys`, device nodes usable. Only ever set when the user
    /// allowed it (`--allow security.insecure`).
    pub privileged: bool,
    /// Mounts, in order.
    pub mounts: Vec<MountSpec>,
    /// Size of `/dev/shm` in bytes (None: [`mounts::SHM_SIZE_DEFAULT`], Docker's 64 MiB).
    #[serde(default)]
    pub shm_size: Option<u64>,
    /// Host files bound read-only at a path when the host has them (`/etc/resolv.conf`,
    /// `/etc/hosts`).
    pub host_files: Vec<(PathBuf, String)>,
    /// Where the init process records the mount points it created.
    pub stubs_file: PathBuf,
    /// Where the init process records how the command ended.
    pub result_file: PathBuf,
}

/// How a sandboxed command ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum InitResult {
    /// Exited with a code.
    Exited(i32),
    /// Killed by a signal.
    Signaled(i32),
    /// The sandbox could not be set up (or the command not started).
    SetupError(String),
}

/// A finished run: how it ended and its last lines of output.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// How the command ended.
    pub result: InitResult,
    /// The last lines of its output (stdout and stderr interleaved).
    pub tail: Vec<String>,
}

/// Runs sandboxes.
pub trait Runtime: Sync {
    /// Runs `spec` (its files go under `run_dir`), passing each line of output to
    /// `output`. Returns once the command and everything it started are gone. When
    /// `cancel` becomes true, the whole process tree is killed and an error returned.
    fn run(
        &self,
        spec: &Spec,
        run_dir: &Path,
        output: &(dyn Fn(&str) + Sync),
        cancel: &AtomicBool,
    ) -> Result<RunOutcome>;
}

/// A shared runtime runs as the runtime it shares (a test keeps one handle on a
/// [`fake::RecordingRuntime`] while the worker owns another).
impl<R: Runtime + Send + ?Sized> Runtime for std::sync::Arc<R> {
    fn run(
        &self,
        spec: &Spec,
        run_dir: &Path,
        output: &(dyn Fn(&str) + Sync),
        cancel: &AtomicBool,
    ) -> Result<RunOutcome> {
        (**self).run(spec, run_dir, output, cancel)
    }
}

/// The namespace-and-`pivot_root` runtime: kiln re-executes itself as the init process.
#[derive(Debug, Clone)]
pub struct LinuxRuntime {
    exe: PathBuf,
}

impl LinuxRuntime {
    /// A runtime whose init process is the running `kiln` binary (or `$KILN_SANDBOX_INIT`).
    pub fn new() -> Result<LinuxRuntime> {
        let exe = match std::env::var_os("KILN_SANDBOX_INIT") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe().with_context(|| "finding the kiln binary".into())?,
        };
        Ok(LinuxRuntime { exe })
    }
}

const TAIL_LINES: usize = 20;

impl Runtime for LinuxRuntime {
    fn run(
        &self,
        spec: &Spec,
        run_dir: &Path,
        output: &(dyn Fn(&str) + Sync),
        cancel: &AtomicBool,
    ) -> Result<RunOutcome> {
        if !rustix::process::geteuid().is_root() {
            return Err(SandboxError::NeedsRoot);
        }
        let spec_path = run_dir.join("spec.json");
        fs::write(&spec_path, serde_json::to_vec(spec)?)?;
        let (reader, writer) = io::pipe().with_context(|| "creating a pipe".into())?;
        let mut child =
            linux::spawn_init(&self.exe, &spec_path, spec.network, OwnedFd::from(writer))
                .with_context(|| format!("starting the sandbox ({})", self.exe.display()))?;
        let (tx, rx) = mpsc::channel::<String>();
        let reader_thread = std::thread::spawn(move || {
            let mut r = io::BufReader::new(reader);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let line = String::from_utf8_lossy(&buf);
                        let line = line.trim_end_matches(['\n', '\r']).to_string();
                        if tx.send(line).is_err() {
                            break;
                        }
                    }
                }
            }
        });
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        let mut keep = |line: String| {
            output(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        };
        let mut cancelled = false;
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(line) => keep(line),
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            }
            if !cancelled && cancel.load(Ordering::SeqCst) {
                // The init process's death takes the command (parent-death signal), and
                // with it, as the pid namespace's first process, every process it started.
                cancelled = true;
                let _ = child.kill();
            }
        }
        let status = child.wait();
        let _ = reader_thread.join();
        if cancelled {
            return Err(SandboxError::Cancelled);
        }
        // The init process records the result in a file; on a full disk it cannot, and
        // its own exit status (the command's, or 125 for a setup error) tells instead.
        let recorded = fs::read(&spec.result_file)
            .ok()
            .and_then(|b| serde_json::from_slice::<InitResult>(&b).ok());
        let result = match (recorded, status.ok().and_then(|s| s.code())) {
            (Some(r), _) => r,
            (None, Some(code)) if code != 125 => InitResult::Exited(code),
            _ => InitResult::SetupError(format!(
                "the sandbox ended without a result{}",
                tail.back().map(|l| format!(": {l}")).unwrap_or_default()
            )),
        };
        Ok(RunOutcome {
            result,
            tail: tail.into(),
        })
    }
}

/// Which snapshotter runs RUN steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum SnapshotterKind {
    /// overlayfs: snapshots are lower dirs, the step writes to an upper dir.
    Overlay,
    /// Copies the tree for each step and diffs it afterwards (no overlayfs needed).
    Copy,
}

const OVERLAYFS_MAGIC: i64 = 0x794c_7630;

impl SnapshotterKind {
    /// overlayfs when the kernel has it and the store's filesystem can hold an upper dir;
    /// otherwise the copy snapshotter, with a notice saying why.
    pub fn detect(store_root: &Path) -> (SnapshotterKind, Option<String>) {
        let has_overlay = fs::read_to_string("/proc/filesystems")
            .map(|s| s.lines().any(|l| l.trim_end().ends_with("\toverlay")))
            .unwrap_or(false);
        if !has_overlay {
            return (
                SnapshotterKind::Copy,
                Some("overlayfs is not available: using the copy snapshotter (slower)".into()),
            );
        }
        if let Ok(st) = rustix::fs::statfs(store_root) {
            if st.f_type == OVERLAYFS_MAGIC {
                return (
                    SnapshotterKind::Copy,
                    Some(format!(
                        "the store {} is on overlayfs, which cannot hold overlay upper dirs: using the copy snapshotter (slower)",
                        store_root.display()
                    )),
                );
            }
        }
        (SnapshotterKind::Overlay, None)
    }
}

/// Resolves `rel` inside `root` as the sandbox will see it: symlinks (absolute ones
/// relative to `root`) are followed and `..` never leaves `root`. Returns the resolved
/// path relative to `root` (which need not exist).
pub fn resolve_in_root(root: &Path, rel: &str) -> io::Result<PathBuf> {
    let mut todo: VecDeque<String> = rel
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .map(str::to_string)
        .collect();
    let mut done: Vec<String> = Vec::new();
    let mut hops = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate: PathBuf = done.iter().chain(std::iter::once(&c)).collect();
        match fs::symlink_metadata(root.join(&candidate)) {
            Ok(m) if m.file_type().is_symlink() => {
                hops += 1;
                if hops > 40 {
                    return Err(io::Error::other(format!("too many symlinks in {rel}")));
                }
                let target = fs::read_link(root.join(&candidate))?;
                let mut parts: Vec<String> = Vec::new();
                if target.is_absolute() {
                    done.clear();
                }
                for comp in target.components() {
                    match comp {
                        Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
                        Component::ParentDir => parts.push("..".into()),
                        _ => {}
                    }
                }
                for p in parts.into_iter().rev() {
                    todo.push_front(p);
                }
            }
            _ => done.push(c),
        }
    }
    Ok(done.iter().collect())
}

/// Mount points the sandbox created in the tree, in creation order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Stubs {
    /// `(path relative to the root, is a directory)`.
    pub created: Vec<(PathBuf, bool)>,
}

impl Stubs {
    /// Makes sure `rel` (already resolved) exists under `root` as a directory or a file,
    /// creating it and its missing parents and recording what was created.
    pub fn ensure(&mut self, root: &Path, rel: &Path, dir: bool) -> io::Result<()> {
        let mut cur = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for (i, c) in comps.iter().enumerate() {
            cur.push(c);
            let p = root.join(&cur);
            let last = i + 1 == comps.len();
            if fs::symlink_metadata(&p).is_ok() {
                continue;
            }
            if last && !dir {
                fs::File::create(&p)?;
                self.created.push((cur.clone(), false));
            } else {
                fs::create_dir(&p)?;
                self.created.push((cur.clone(), true));
            }
        }
        Ok(())
    }

    /// Reads the stubs an init process recorded (none if it did not get that far).
    pub fn load(path: &Path) -> Stubs {
        fs::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Removes the stubs from `tree` (the upper dir or the copied tree), newest first, as
    /// long as they are still what the sandbox made: an empty file or an empty directory.
    /// The step may have swapped a stub's parent for a symlink to a host directory: no
    /// symlink is followed on the way ([`beneath`]), so such a stub is left alone.
    pub fn remove_from(&self, tree: &Path) {
        for (rel, dir) in self.created.iter().rev() {
            let Some(at) = beneath::At::find(tree, rel) else {
                continue;
            };
            let Ok(st) = at.stat() else { continue };
            if *dir && beneath::is_dir(&st) {
                let _ = at.remove(true);
            } else if !*dir && beneath::is_file(&st) && st.st_size == 0 {
                let _ = at.remove(false);
            }
        }
    }

    /// The parent directories of the stubs (relative, deepest first), which overlayfs may
    /// have copied up only because a stub was created in them.
    pub fn parents(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for (rel, _) in &self.created {
            let mut p = rel.parent();
            while let Some(d) = p {
                if d.as_os_str().is_empty() {
                    break;
                }
                if !out.iter().any(|o| o == d) {
                    out.push(d.to_path_buf());
                }
                p = d.parent();
            }
        }
        out.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        out
    }
}

/// Whether the filesystem holding `path` is (nearly) full: under 1 MiB free for kiln.
/// A step that failed then most likely failed for that reason, which its own output may
/// not say.
pub fn disk_full(path: &Path) -> bool {
    rustix::fs::statvfs(path).is_ok_and(|st| st.f_bavail.saturating_mul(st.f_frsize) < 1 << 20)
}

/// Formats argv as BuildKit does in its error message.
pub fn describe_args(args: &[String]) -> String {
    serde_json::to_string(args).unwrap_or_default()
}

#[cfg(test)]
mod tests;
