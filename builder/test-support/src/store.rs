//! The kiln binary under test pointed at a store of the test's own: the helper that a
//! dozen integration test files of kiln-builder each had a copy of (`Env`).
//!
//! A [`KilnStore`] is a [`Workspace`] (contexts, outputs; it derefs to it) with the
//! store at `<workspace>/store`. Every command it makes ([`KilnStore::kiln`],
//! [`KilnStore::proc`]) has the same environment, so that the developer's shell does not
//! leak into a test:
//!
//! - `KILN_ROOT` is the store;
//! - `SOURCE_DATE_EPOCH` is unset (timestamps and digests are a build's own);
//! - `SSH_AUTH_SOCK` is unset (no agent but one a test gives with `--ssh`);
//! - `KILN_NO_RECORD` is unset (build records on, as by default: misses are explained).
//!
//! A test that wants otherwise says so once, with [`KilnStore::env`] or
//! [`KilnStore::env_remove`] on the store (every command gets it), or on one command.
//!
//! No `[gc]` config is written: the store's default `reserved-space` (10% of the disk,
//! at most 10 GB) keeps the collection for free space, which a nearly full disk starts
//! after every build, from shrinking a test's small store.
//!
//! ```no_run
//! use kiln_test_support::{BUSYBOX, KilnStore, step_cached};
//! let store = KilnStore::new()
//!     .env("KILN_NO_RECORD", "1")
//!     .with_busybox(BUSYBOX);
//! let ctx = store.context("app", "FROM busybox:kiln-test\nRUN true\n");
//! let built = store.build_ok(&ctx, &["-t", "app:1"]);
//! assert_eq!(built.step("RUN true")["cached"], false);
//! assert!(step_cached(&store.build_ok(&ctx, &[]).report, "RUN true"));
//! ```
//!
//! A test file with methods of its own wraps the store with [`store_env!`](crate::store_env).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::{Workspace, busybox_context, run_ok};

/// The tag the busybox base is built as in most tests' stores.
pub const BUSYBOX: &str = "busybox:kiln-test";

/// The path of the `kiln` binary under test (for `script`, shells and spawned children).
pub fn kiln_bin() -> PathBuf {
    assert_cmd::cargo::cargo_bin("kiln")
}

/// A test's workspace with a kiln store in it, and kiln commands pointed at that store.
pub struct KilnStore {
    /// The test's workspace: contexts, outputs, and the store at `store`.
    pub ws: Workspace,
    /// Variables set (`Some`) or removed (`None`) on every command, after the defaults.
    env: Vec<(OsString, Option<OsString>)>,
}

/// The workspace's methods (`path`, `context`, `write`) on the store itself.
impl std::ops::Deref for KilnStore {
    type Target = Workspace;
    fn deref(&self) -> &Workspace {
        &self.ws
    }
}

impl Default for KilnStore {
    fn default() -> Self {
        Self::new()
    }
}

/// What one `kiln build --report FILE ...` did.
#[derive(Debug)]
pub struct Built {
    /// Whether kiln exited with success.
    pub ok: bool,
    /// Its stdout (untrimmed).
    pub stdout: String,
    /// Its stderr (the progress lines and errors).
    pub stderr: String,
    /// The `--report` JSON, `Value::Null` when kiln wrote none (a broken one panics).
    pub report: Value,
}

impl KilnStore {
    /// A fresh workspace with an empty store (created by kiln on first use).
    pub fn new() -> KilnStore {
        KilnStore {
            ws: Workspace::new(),
            env: Vec::new(),
        }
    }

    /// Sets `key` to `value` in every command this store makes.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> KilnStore {
        self.env
            .push((key.as_ref().into(), Some(value.as_ref().into())));
        self
    }

    /// Removes `key` from every command this store makes.
    pub fn env_remove(mut self, key: impl AsRef<OsStr>) -> KilnStore {
        self.env.push((key.as_ref().into(), None));
        self
    }

    /// The store's root (`<workspace>/store`).
    pub fn root(&self) -> PathBuf {
        self.ws.path("store")
    }

    /// `kiln` with this store and the environment of the module doc.
    pub fn kiln(&self) -> assert_cmd::Command {
        self.kiln_at(&self.root())
    }

    /// `kiln` with the environment of this store's commands but the store `root` (a
    /// second store of the same test).
    pub fn kiln_at(&self, root: &Path) -> assert_cmd::Command {
        let mut c = assert_cmd::Command::new(kiln_bin());
        c.env("KILN_ROOT", root);
        for (k, v) in self.vars() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// The same command as [`KilnStore::kiln`] as a `std::process::Command`, for a child
    /// a test spawns, signals or kills.
    pub fn proc(&self) -> std::process::Command {
        let mut c = std::process::Command::new(kiln_bin());
        c.env("KILN_ROOT", self.root());
        for (k, v) in self.vars() {
            match v {
                Some(v) => c.env(k, v),
                None => c.env_remove(k),
            };
        }
        c
    }

    /// The defaults, then this store's own settings (a later one wins).
    fn vars(&self) -> impl Iterator<Item = (&OsStr, Option<&OsStr>)> {
        ["SOURCE_DATE_EPOCH", "SSH_AUTH_SOCK", "KILN_NO_RECORD"]
            .into_iter()
            .map(|k| (OsStr::new(k), None))
            .chain(self.env.iter().map(|(k, v)| (k.as_os_str(), v.as_deref())))
    }

    /// Runs `kiln ARGS`; its output, whatever its status.
    pub fn out(&self, args: &[&str]) -> Output {
        self.kiln().args(args).output().unwrap()
    }

    /// Runs `kiln ARGS`, which must succeed (else panics with its stdout and stderr); its
    /// stdout, untrimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        run_ok(self.proc().args(args))
    }

    /// `kiln build --progress plain --report FILE ARGS CTX`, whatever its outcome.
    pub fn build(&self, ctx: &Path, args: &[&str]) -> Built {
        self.build_with(self.kiln(), ctx, args)
    }

    /// [`KilnStore::build`] with a command of the caller's (more variables, another
    /// store).
    pub fn build_with(&self, mut kiln: assert_cmd::Command, ctx: &Path, args: &[&str]) -> Built {
        let report = self.ws.path("report.json");
        let _ = fs::remove_file(&report);
        let out = kiln
            .args(["build", "--progress", "plain", "--report"])
            .arg(&report)
            .args(args)
            .arg(ctx)
            .output()
            .unwrap();
        Built {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            report: fs::read(&report).ok().map_or(Value::Null, |b| {
                serde_json::from_slice(&b).unwrap_or_else(|e| {
                    panic!(
                        "kiln wrote a broken report ({e}): {}",
                        String::from_utf8_lossy(&b)
                    )
                })
            }),
        }
    }

    /// [`KilnStore::build`], which must succeed (else panics with its stderr).
    pub fn build_ok(&self, ctx: &Path, args: &[&str]) -> Built {
        let b = self.build(ctx, args);
        assert!(b.ok, "kiln build {args:?} failed:\n{}", b.stderr);
        b
    }

    /// This store with the busybox base built in it as `tag` ([`KilnStore::busybox`]).
    pub fn with_busybox(self, tag: &str) -> KilnStore {
        self.busybox(tag);
        self
    }

    /// Makes the busybox base's context at `busybox` in the workspace (once) and builds
    /// it as `tag` with `--progress quiet`; the context.
    pub fn busybox(&self, tag: &str) -> PathBuf {
        self.busybox_with(self.kiln(), tag)
    }

    /// [`KilnStore::busybox`] with a command of the caller's (say, a `SOURCE_DATE_EPOCH`).
    pub fn busybox_with(&self, mut kiln: assert_cmd::Command, tag: &str) -> PathBuf {
        let ctx = self.ws.path("busybox");
        if !ctx.exists() {
            busybox_context(&ctx);
        }
        kiln.args(["build", "--progress", "quiet", "-t", tag])
            .arg(&ctx)
            .assert()
            .success();
        ctx
    }
}

/// The step of `report` (a `--report` JSON) whose instruction is `instruction`
/// (`"RUN make"`); panics naming it and the report when there is none.
pub fn report_step<'a>(report: &'a Value, instruction: &str) -> &'a Value {
    report["steps"]
        .as_array()
        .unwrap_or_else(|| panic!("no steps in the report: {report}"))
        .iter()
        .find(|s| s["instruction"] == instruction)
        .unwrap_or_else(|| panic!("no step {instruction:?}: {report}"))
}

/// Whether the step `instruction` of `report` was a cache hit ([`report_step`]).
pub fn step_cached(report: &Value, instruction: &str) -> bool {
    report_step(report, instruction)["cached"]
        .as_bool()
        .unwrap_or_else(|| panic!("step {instruction:?} says no `cached`: {report}"))
}

/// Declares a test file's own `Env`: a tuple struct around a [`KilnStore`] that derefs
/// to it, for the methods only that file needs (in an `impl Env` next to it).
///
/// ```
/// kiln_test_support::store_env! {
///     /// The test's store and its git repositories.
///     struct Env;
/// }
/// impl Env {
///     fn new() -> Env {
///         Env(kiln_test_support::KilnStore::new())
///     }
///     fn repo(&self) -> std::path::PathBuf {
///         self.path("repo")
///     }
/// }
/// # assert!(Env::new().repo().ends_with("repo"));
/// ```
#[macro_export]
macro_rules! store_env {
    ($(#[$meta:meta])* struct $name:ident;) => {
        $(#[$meta])*
        struct $name($crate::KilnStore);

        impl ::std::ops::Deref for $name {
            type Target = $crate::KilnStore;
            fn deref(&self) -> &$crate::KilnStore {
                &self.0
            }
        }
    };
}

impl Built {
    /// Whether each step of the report was a cache hit, in order.
    pub fn cached(&self) -> Vec<bool> {
        self.steps()
            .iter()
            .map(|s| s["cached"].as_bool().unwrap())
            .collect()
    }

    /// The report's step whose instruction is `instruction` ([`report_step`]).
    pub fn step(&self, instruction: &str) -> &Value {
        report_step(&self.report, instruction)
    }

    /// The report's steps; panics when there is no report.
    pub fn steps(&self) -> &[Value] {
        self.report["steps"]
            .as_array()
            .unwrap_or_else(|| panic!("no steps in the report: {}\n{}", self.report, self.stderr))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_get_the_store_and_the_settings_in_order() {
        let s = KilnStore::new()
            .env("KILN_NO_RECORD", "1")
            .env("A", "1")
            .env_remove("A");
        let c = s.proc();
        let envs: Vec<_> = c.get_envs().collect();
        let root = s.root();
        assert!(envs.contains(&(OsStr::new("KILN_ROOT"), Some(root.as_os_str()))));
        assert!(envs.contains(&(OsStr::new("SOURCE_DATE_EPOCH"), None)));
        assert!(envs.contains(&(OsStr::new("SSH_AUTH_SOCK"), None)));
        assert!(envs.contains(&(OsStr::new("KILN_NO_RECORD"), Some(OsStr::new("1")))));
        assert!(envs.contains(&(OsStr::new("A"), None)));
    }
}
