//! The mounts of a sandbox, as data: [`plan`] turns a [`Spec`] into the ordered list of
//! mounts the Linux runtime makes, and [`linux`](crate::linux) makes exactly those. That
//! split lets tests check what a step will see (which mounts are read-only, `nodev`,
//! where secrets go, which paths are masked) without root and without mounting anything.

use std::path::PathBuf;

use crate::{MountSpec, RootSpec, Spec};

/// Paths hidden from a step as runc hides them for Docker (a directory gets an empty
/// read-only tmpfs, a file `/dev/null`).
pub const MASKED_PATHS: &[&str] = &[
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];

/// Paths a step may read but not write, as with Docker.
pub const READONLY_PATHS: &[&str] = &[
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The size of `/dev/shm` unless `--shm-size` says otherwise: Docker's 64 MiB.
pub const SHM_SIZE_DEFAULT: u64 = 64 << 20;

/// Where a mount goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The sandbox's root ([`Spec::merged`]).
    Root,
    /// An absolute path inside the sandbox, resolved in the tree (its symlinks followed,
    /// never leaving it) and created as a stub if missing.
    Sandbox(String),
    /// A host directory of the init process's own ([`Spec::scratch`]), created if missing:
    /// the tree a `--mount=type=bind,from=...` binds from, a secret's tmpfs.
    Scratch(PathBuf),
}

/// What is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// overlayfs of `lowers` (top first), writable into `upper` (with its work dir) when
    /// given.
    Overlay {
        /// Lower directories, top first.
        lowers: Vec<PathBuf>,
        /// Upper and work directories.
        upper: Option<(PathBuf, PathBuf)>,
    },
    /// A recursive bind (`rbind`) of a host path, then a remount with the flags. With
    /// `only_if_file`, skipped unless the host has a regular file there (`/etc/hosts`).
    Bind {
        /// Host path.
        source: PathBuf,
        /// Skip unless `source` is a regular file.
        only_if_file: bool,
    },
    /// A recursive bind of `subpath` (resolved inside `tree`, which an earlier
    /// [`Kind::Overlay`] mounted), then a remount with the flags.
    BindFrom {
        /// The mounted tree (a [`Target::Scratch`] directory).
        tree: PathBuf,
        /// Path inside it.
        subpath: String,
    },
    /// A new filesystem of type `fstype` (`tmpfs`, `proc`) with mount data.
    Fs {
        /// Filesystem type.
        fstype: &'static str,
        /// Mount data (`mode=1777,size=...`).
        data: Option<String>,
    },
    /// `/sys`: sysfs, or where the kernel refuses a new one, a bind of the host's.
    Sysfs,
    /// The minimal `/dev`: a tmpfs with the host's null, zero, full, random, urandom and
    /// tty bound in, a private devpts and `/dev/shm` (a tmpfs of `shm_size` bytes).
    Dev {
        /// The size of `/dev/shm`.
        shm_size: u64,
    },
    /// A secret: `source` copied to `file` (in a private tmpfs) with the mode and owner,
    /// then bound (not recursively) onto the target.
    SecretFile {
        /// The secret on the host.
        source: PathBuf,
        /// The copy in the init process's tmpfs.
        file: PathBuf,
        /// File mode.
        mode: u32,
        /// Owner.
        uid: u32,
        /// Group.
        gid: u32,
    },
    /// A masked path: an empty read-only tmpfs over a directory, `/dev/null` over a file;
    /// nothing when the kernel has no such path.
    Mask,
    /// A path bound onto itself read-only; nothing when the kernel has no such path.
    ReadOnly,
}

/// Flags of a mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Flags {
    /// `ro`.
    pub readonly: bool,
    /// `nodev`: device nodes cannot be opened.
    pub nodev: bool,
    /// `nosuid`.
    pub nosuid: bool,
    /// `noexec`.
    pub noexec: bool,
}

/// One mount of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// What is mounted.
    pub kind: Kind,
    /// Where.
    pub target: Target,
    /// Its flags.
    pub flags: Flags,
    /// Made by the command's process, once the new pid namespace exists (`/proc` and the
    /// masks and read-only paths under `/proc` and `/sys`), rather than by init.
    pub in_command: bool,
}

impl Mount {
    fn new(kind: Kind, target: Target, flags: Flags) -> Mount {
        Mount {
            kind,
            target,
            flags,
            in_command: false,
        }
    }

    /// The target inside the sandbox, if it is there (not the root, not scratch).
    pub fn sandbox_path(&self) -> Option<&str> {
        match &self.target {
            Target::Sandbox(p) => Some(p),
            _ => None,
        }
    }

    /// Whether it is a bind mount (rather than a new filesystem).
    pub fn is_bind(&self) -> bool {
        matches!(
            self.kind,
            Kind::Bind { .. } | Kind::BindFrom { .. } | Kind::SecretFile { .. } | Kind::ReadOnly
        )
    }
}

/// The mounts the Linux runtime makes for `spec`, in order: the root, `/proc`, `/dev`,
/// `/sys`, the step's mounts, the host files (`/etc/resolv.conf`, `/etc/hosts`) and
/// (unless [`Spec::privileged`]) the masked and read-only paths. The init process makes
/// every mount point in that order and the mounts not [`Mount::in_command`]; the
/// command's process then mounts the others, in order.
///
/// Every mount but the devices of `/dev` is `nodev` unless the spec is privileged: without
/// a device cgroup, that is what keeps a device node a step makes from reaching the
/// host's hardware.
pub fn plan(spec: &Spec) -> Vec<Mount> {
    let nodev = !spec.privileged;
    let rw = Flags {
        nodev,
        ..Flags::default()
    };
    let ro = Flags {
        readonly: true,
        ..rw
    };
    let ro_if = |readonly: bool| if readonly { ro } else { rw };
    // Every flag: what the kernel's own views (/sys, /proc, the masks) get.
    let locked = Flags {
        readonly: true,
        nodev: true,
        nosuid: true,
        noexec: true,
    };
    let root = match &spec.root {
        RootSpec::Overlay {
            lowers,
            upper,
            work,
        } => Mount::new(
            Kind::Overlay {
                lowers: lowers.clone(),
                upper: Some((upper.clone(), work.clone())),
            },
            Target::Root,
            rw,
        ),
        // pivot_root needs the new root to be a mount point.
        RootSpec::Dir => Mount::new(
            Kind::Bind {
                source: spec.merged.clone(),
                only_if_file: false,
            },
            Target::Root,
            rw,
        ),
    };
    // /proc belongs to the new pid namespace: the command mounts it, but its mount point
    // is made first, with the others.
    let proc = Mount {
        in_command: true,
        ..Mount::new(
            Kind::Fs {
                fstype: "proc",
                data: None,
            },
            Target::Sandbox("/proc".into()),
            Flags {
                readonly: false,
                ..locked
            },
        )
    };
    let mut out = vec![
        root,
        proc,
        Mount::new(
            Kind::Dev {
                shm_size: spec.shm_size.unwrap_or(SHM_SIZE_DEFAULT),
            },
            Target::Sandbox("/dev".into()),
            Flags { nosuid: true, ..rw },
        ),
        Mount::new(Kind::Sysfs, Target::Sandbox("/sys".into()), locked),
    ];
    for (i, m) in spec.mounts.iter().enumerate() {
        let n = i + 1;
        match m {
            MountSpec::Bind {
                source,
                target,
                readonly,
            } => out.push(Mount::new(
                Kind::Bind {
                    source: source.clone(),
                    only_if_file: false,
                },
                Target::Sandbox(target.clone()),
                ro_if(*readonly),
            )),
            MountSpec::Layers {
                lowers,
                rw: upper,
                subpath,
                target,
                readonly,
            } => {
                let tree = spec.scratch.join(format!("m{n}"));
                out.push(Mount::new(
                    Kind::Overlay {
                        lowers: lowers.clone(),
                        upper: upper.clone(),
                    },
                    Target::Scratch(tree.clone()),
                    ro_if(upper.is_none()),
                ));
                out.push(Mount::new(
                    Kind::BindFrom {
                        tree,
                        subpath: subpath.clone(),
                    },
                    Target::Sandbox(target.clone()),
                    ro_if(*readonly),
                ));
            }
            MountSpec::Tmpfs { target, size } => out.push(Mount::new(
                Kind::Fs {
                    fstype: "tmpfs",
                    data: Some(match size {
                        Some(s) => format!("mode=1777,size={s}"),
                        None => "mode=1777".into(),
                    }),
                },
                Target::Sandbox(target.clone()),
                Flags {
                    nodev: true,
                    nosuid: true,
                    ..Flags::default()
                },
            )),
            MountSpec::Secret {
                source,
                target,
                mode,
                uid,
                gid,
            } => {
                // The secret is copied into a private tmpfs that exists only in this
                // mount namespace, then bound read-only onto its target.
                let holder = spec.scratch.join(format!("s{n}"));
                out.push(Mount::new(
                    Kind::Fs {
                        fstype: "tmpfs",
                        data: Some("mode=0700,size=1m".into()),
                    },
                    Target::Scratch(holder.clone()),
                    Flags {
                        readonly: false,
                        ..locked
                    },
                ));
                out.push(Mount::new(
                    Kind::SecretFile {
                        source: source.clone(),
                        file: holder.join("secret"),
                        mode: *mode,
                        uid: *uid,
                        gid: *gid,
                    },
                    Target::Sandbox(target.clone()),
                    ro,
                ));
            }
        }
    }
    for (host, target) in &spec.host_files {
        out.push(Mount::new(
            Kind::Bind {
                source: host.clone(),
                only_if_file: true,
            },
            Target::Sandbox(target.clone()),
            ro,
        ));
    }
    if !spec.privileged {
        for (paths, kind) in [(MASKED_PATHS, Kind::Mask), (READONLY_PATHS, Kind::ReadOnly)] {
            for p in paths {
                out.push(Mount {
                    in_command: true,
                    ..Mount::new(kind.clone(), Target::Sandbox((*p).into()), locked)
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::NetworkMode;

    fn spec(mounts: Vec<MountSpec>) -> Spec {
        Spec {
            root: RootSpec::Overlay {
                lowers: vec!["/s/l2".into(), "/s/l1".into()],
                upper: "/r/upper".into(),
                work: "/r/work".into(),
            },
            merged: "/r/merged".into(),
            scratch: "/r/scratch".into(),
            args: vec!["sh".into()],
            env: vec![],
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            groups: vec![0],
            network: NetworkMode::Host,
            hostname: "kiln".into(),
            privileged: false,
            mounts,
            shm_size: None,
            host_files: vec![("/etc/hosts".into(), "/etc/hosts".into())],
            stubs_file: "/r/stubs".into(),
            result_file: "/r/result".into(),
        }
    }

    fn at<'a>(plan: &'a [Mount], target: &str) -> Vec<&'a Mount> {
        plan.iter()
            .filter(|m| m.sandbox_path() == Some(target))
            .collect()
    }

    fn one<'a>(plan: &'a [Mount], target: &str) -> &'a Mount {
        let found = at(plan, target);
        assert_eq!(found.len(), 1, "one mount at {target}: {plan:#?}");
        found[0]
    }

    const RW_NODEV: Flags = Flags {
        readonly: false,
        nodev: true,
        nosuid: false,
        noexec: false,
    };
    const RO_NODEV: Flags = Flags {
        readonly: true,
        ..RW_NODEV
    };

    #[test]
    fn root_is_a_writable_nodev_overlay_of_the_snapshots() {
        let plan = plan(&spec(vec![]));
        assert_eq!(plan[0].target, Target::Root);
        assert_eq!(
            plan[0].kind,
            Kind::Overlay {
                lowers: vec!["/s/l2".into(), "/s/l1".into()],
                upper: Some(("/r/upper".into(), "/r/work".into())),
            }
        );
        assert_eq!(plan[0].flags, RW_NODEV);
        let mut dir = spec(vec![]);
        dir.root = RootSpec::Dir;
        let plan = super::plan(&dir);
        assert_eq!(
            plan[0].kind,
            Kind::Bind {
                source: "/r/merged".into(),
                only_if_file: false
            }
        );
        assert_eq!(plan[0].flags, RW_NODEV);
    }

    #[test]
    fn a_cache_mount_is_writable_and_nodev() {
        let plan = plan(&spec(vec![MountSpec::Bind {
            source: "/store/cache/abc".into(),
            target: "/root/.cache".into(),
            readonly: false,
        }]));
        let m = one(&plan, "/root/.cache");
        assert!(m.is_bind());
        assert_eq!(
            m.kind,
            Kind::Bind {
                source: "/store/cache/abc".into(),
                only_if_file: false
            }
        );
        assert_eq!(m.flags, RW_NODEV);
        assert!(!m.in_command);
    }

    #[test]
    fn a_bind_from_a_stage_is_read_only_unless_rw() {
        let layers = |rw: bool| MountSpec::Layers {
            lowers: vec!["/s/b".into()],
            rw: rw.then(|| ("/r/mu".into(), "/r/mw".into())),
            subpath: "out".into(),
            target: "/src".into(),
            readonly: !rw,
        };
        let plan = plan(&spec(vec![layers(false)]));
        let i = plan
            .iter()
            .position(|m| m.sandbox_path() == Some("/src"))
            .unwrap();
        // The stage's tree is mounted (read-only) in scratch, then its subpath bound.
        assert_eq!(plan[i - 1].target, Target::Scratch("/r/scratch/m1".into()));
        assert_eq!(
            plan[i - 1].kind,
            Kind::Overlay {
                lowers: vec!["/s/b".into()],
                upper: None
            }
        );
        assert_eq!(plan[i - 1].flags, RO_NODEV);
        assert_eq!(
            plan[i].kind,
            Kind::BindFrom {
                tree: "/r/scratch/m1".into(),
                subpath: "out".into()
            }
        );
        assert_eq!(plan[i].flags, RO_NODEV);

        let plan = super::plan(&spec(vec![layers(true)]));
        let m = one(&plan, "/src");
        assert_eq!(m.flags, RW_NODEV);
        let tree = plan
            .iter()
            .find(|m| m.target == Target::Scratch("/r/scratch/m1".into()))
            .unwrap();
        assert_eq!(tree.flags, RW_NODEV);
        assert!(matches!(&tree.kind, Kind::Overlay { upper: Some(_), .. }));
    }

    #[test]
    fn secrets_are_read_only_files_under_run_secrets() {
        let plan = plan(&spec(vec![MountSpec::Secret {
            source: "/home/me/token".into(),
            target: "/run/secrets/token".into(),
            mode: 0o400,
            uid: 0,
            gid: 0,
        }]));
        let m = one(&plan, "/run/secrets/token");
        assert_eq!(
            m.kind,
            Kind::SecretFile {
                source: "/home/me/token".into(),
                file: "/r/scratch/s1/secret".into(),
                mode: 0o400,
                uid: 0,
                gid: 0,
            }
        );
        assert_eq!(m.flags, RO_NODEV);
        // Its copy lives in a private tmpfs, never in the tree.
        let holder = plan
            .iter()
            .find(|m| m.target == Target::Scratch("/r/scratch/s1".into()))
            .unwrap();
        assert_eq!(
            holder.kind,
            Kind::Fs {
                fstype: "tmpfs",
                data: Some("mode=0700,size=1m".into())
            }
        );
        assert!(holder.flags.noexec && holder.flags.nodev && holder.flags.nosuid);
    }

    #[test]
    fn tmpfs_mounts_have_their_size() {
        let plan = plan(&spec(vec![
            MountSpec::Tmpfs {
                target: "/tmp".into(),
                size: Some(65536),
            },
            MountSpec::Tmpfs {
                target: "/scratch".into(),
                size: None,
            },
        ]));
        let sized = one(&plan, "/tmp");
        assert_eq!(
            sized.kind,
            Kind::Fs {
                fstype: "tmpfs",
                data: Some("mode=1777,size=65536".into())
            }
        );
        assert!(sized.flags.nodev && sized.flags.nosuid && !sized.flags.readonly);
        assert_eq!(
            one(&plan, "/scratch").kind,
            Kind::Fs {
                fstype: "tmpfs",
                data: Some("mode=1777".into())
            }
        );
    }

    #[test]
    fn proc_sys_dev_masks_and_read_only_paths() {
        let plan = plan(&spec(vec![]));
        let proc = one(&plan, "/proc");
        assert!(proc.in_command);
        assert_eq!(
            proc.kind,
            Kind::Fs {
                fstype: "proc",
                data: None
            }
        );
        assert!(proc.flags.nodev && proc.flags.nosuid && proc.flags.noexec);
        let sys = one(&plan, "/sys");
        assert_eq!(sys.kind, Kind::Sysfs);
        assert!(sys.flags.readonly && sys.flags.nodev);
        let dev = one(&plan, "/dev");
        assert_eq!(
            dev.kind,
            Kind::Dev {
                shm_size: SHM_SIZE_DEFAULT
            }
        );
        let sized = super::plan(&Spec {
            shm_size: Some(1 << 30),
            ..spec(vec![])
        });
        assert_eq!(one(&sized, "/dev").kind, Kind::Dev { shm_size: 1 << 30 });
        assert!(dev.flags.nodev && dev.flags.nosuid);
        for p in [
            "/proc/kcore",
            "/proc/keys",
            "/proc/timer_list",
            "/sys/firmware",
        ] {
            let m = one(&plan, p);
            assert_eq!(m.kind, Kind::Mask, "{p}");
            assert!(m.in_command && m.flags.readonly, "{p}");
        }
        for p in [
            "/proc/sys",
            "/proc/sysrq-trigger",
            "/proc/irq",
            "/proc/bus",
            "/proc/fs",
        ] {
            let m = one(&plan, p);
            assert_eq!(m.kind, Kind::ReadOnly, "{p}");
            assert!(m.in_command && m.flags.readonly && m.flags.nodev, "{p}");
        }
        // /proc is mounted before what is masked in it.
        let pos = |t: &str| plan.iter().position(|m| m.sandbox_path() == Some(t));
        assert!(pos("/proc") < pos("/proc/kcore"));
        let hosts = one(&plan, "/etc/hosts");
        assert_eq!(
            hosts.kind,
            Kind::Bind {
                source: "/etc/hosts".into(),
                only_if_file: true
            }
        );
        assert_eq!(hosts.flags, RO_NODEV);
    }

    #[test]
    fn security_insecure_drops_the_masks_and_nodev() {
        let mut s = spec(vec![
            MountSpec::Bind {
                source: "/store/cache/abc".into(),
                target: "/cache".into(),
                readonly: false,
            },
            MountSpec::Bind {
                source: "/ctx".into(),
                target: "/ctx".into(),
                readonly: true,
            },
        ]);
        s.privileged = true;
        let plan = plan(&s);
        assert!(
            !plan
                .iter()
                .any(|m| matches!(m.kind, Kind::Mask | Kind::ReadOnly))
        );
        assert!(!plan[0].flags.nodev, "root");
        assert!(!one(&plan, "/cache").flags.nodev);
        assert!(!one(&plan, "/dev").flags.nodev);
        let ctx = one(&plan, "/ctx").flags;
        assert!(ctx.readonly && !ctx.nodev);
        // /proc itself is still there, and the kernel's views stay locked.
        assert!(at(&plan, "/proc").len() == 1 && one(&plan, "/sys").flags.readonly);
    }
}
