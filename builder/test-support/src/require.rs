//! Test tiers: a test that needs root, a tool or an opt-in environment says so first.
//!
//! On a developer's machine (env `CI` unset or empty) a missing requirement skips the
//! test: it prints `skipped: TEST: REASON` to stderr and returns. When `CI` is set to
//! any non-empty value (`.ci/run` exports `CI=1`), the same check panics with the reason
//! and how to fix it: CI installs every tool and runs as root, so a test there can never
//! pass by not running.
//!
//! Use the macros at the top of a test (they `return` from the enclosing function):
//!
//! ```ignore
//! #[test]
//! fn pushes_to_a_registry() {
//!     kiln_test_support::require_root!();
//!     let skopeo = kiln_test_support::require_tool!("skopeo");
//!     // ...
//! }
//! ```
//!
//! Helpers deep inside a test (a registry launcher, say) cannot return from it; they use
//! [`tool_path`], which always panics with the install hint when the tool is missing.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Debian packages that provide the tools the tests use (what `.ci/install.sh` installs).
const PACKAGES: &[(&str, &str)] = &[
    ("skopeo", "skopeo"),
    ("umoci", "umoci"),
    ("oci-image-tool", "oci-image-tool"),
    ("buildah", "buildah"),
    ("busybox", "busybox-static"),
    ("mmdebstrap", "mmdebstrap"),
    ("arch-test", "arch-test"),
    ("docker-registry", "docker-registry"),
    ("/usr/bin/docker-registry", "docker-registry"),
    ("htpasswd", "apache2-utils"),
    ("openssl", "openssl"),
    ("gcc", "gcc libc6-dev"),
    ("setpriv", "util-linux"),
    ("ip", "iproute2"),
    ("python3", "python3"),
    ("ssh-agent", "openssh-client"),
    ("sshd", "openssh-server"),
    ("dockerd", "docker.io"),
    ("docker", "docker.io"),
];

/// How to install `tool`: `apt-get install -y PACKAGE`, from the table of the tools the
/// tests use, or a generic line for others.
pub fn install_hint(tool: &str) -> String {
    match PACKAGES.iter().find(|(t, _)| *t == tool) {
        Some((_, pkg)) => format!("apt-get install -y {pkg} (or: bash .ci/install.sh)"),
        None => format!("install `{tool}`"),
    }
}

/// Whether the tests run under CI: env `CI` set to a non-empty value.
pub fn in_ci() -> bool {
    ci_value_means_ci(std::env::var_os("CI"))
}

fn ci_value_means_ci(v: Option<OsString>) -> bool {
    v.is_some_and(|v| !v.is_empty())
}

/// Whether the process runs as root.
pub fn is_root() -> bool {
    // `id -u` would need a process; /proc/self/status says it without `unsafe`.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// The name of the running test (libtest names each test's thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned()
}

/// The decision every check makes: `true` when `ok`; otherwise skip (print, return
/// false) or, under CI, panic with `reason`.
fn gate(ok: bool, ci: bool, reason: &str) -> bool {
    if ok {
        return true;
    }
    if ci {
        panic!("{reason} (CI is set: a test that cannot run fails instead of skipping)");
    }
    // Straight to the process's stderr: libtest captures `eprintln!` of passing tests,
    // and a skip must be seen.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "skipped: {}: {reason}", test_name());
    false
}

/// `true` if `ok`; otherwise skips with `reason` (returns false) or, under CI, panics.
/// Prefer [`require!`](crate::require!), which returns from the test.
pub fn check(ok: bool, reason: &str) -> bool {
    gate(ok, in_ci(), reason)
}

/// `true` when running as root; otherwise skips or, under CI, panics.
/// Prefer [`require_root!`](crate::require_root!).
pub fn check_root() -> bool {
    check(
        is_root(),
        "needs root (namespaces, mounts, device nodes, file owners): run the tests as root",
    )
}

/// The path of `tool` when installed; otherwise skips (`None`) or, under CI, panics with
/// `hint`. Prefer [`require_tool!`](crate::require_tool!).
pub fn check_tool(tool: &str, hint: &str) -> Option<PathBuf> {
    let found = find_tool(tool);
    check(found.is_some(), &format!("needs `{tool}`: {hint}")).then(|| found.unwrap())
}

/// `tool` found as a path or on `PATH`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    if tool.contains('/') {
        return Path::new(tool).is_file().then(|| PathBuf::from(tool));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(tool))
        .find(|c| c.is_file())
}

/// The path of `tool`; panics with its install hint when it is missing, CI or not (for
/// helpers that cannot return from the test; the test itself checks first).
pub fn tool_path(tool: &str) -> PathBuf {
    find_tool(tool).unwrap_or_else(|| {
        panic!(
            "this test needs `{tool}`, which is not installed: {}",
            install_hint(tool)
        )
    })
}

/// Returns from the enclosing test unless it runs as root: prints why on a developer's
/// machine, panics when `CI` is set.
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::require::check_root() {
            return;
        }
    };
}

/// Evaluates to the tool's path, or returns from the enclosing test when it is missing
/// (printing why; panicking when `CI` is set). `require_tool!("skopeo")` takes the
/// install hint from the table of tools the tests use; `require_tool!(name, hint)` gives
/// its own.
#[macro_export]
macro_rules! require_tool {
    ($tool:expr) => {
        $crate::require_tool!($tool, &$crate::require::install_hint($tool))
    };
    ($tool:expr, $hint:expr) => {
        match $crate::require::check_tool($tool, $hint) {
            Some(path) => path,
            None => return,
        }
    };
}

/// What a test of real builds or containers says first: `require_root!()`, then
/// `require_tool!` for each tool named (`needs!("busybox")`). Returns from the test
/// unless it runs as root with them installed: a skip with a message on a developer's
/// machine, a failure when `CI` is set.
#[macro_export]
macro_rules! needs {
    ($($tool:literal),* $(,)?) => {
        $crate::require_root!();
        $($crate::require_tool!($tool);)*
    };
}

/// Returns from the enclosing test unless `condition` holds (printing `reason`;
/// panicking with it when `CI` is set): for opt-in tiers such as `KILN_TEST_DEBIAN`.
#[macro_export]
macro_rules! require {
    ($condition:expr, $reason:expr) => {
        if !$crate::require::check($condition, $reason) {
            return;
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_means_a_non_empty_value() {
        assert!(!ci_value_means_ci(None));
        assert!(!ci_value_means_ci(Some("".into())));
        assert!(ci_value_means_ci(Some("1".into())));
        assert!(ci_value_means_ci(Some("true".into())));
    }

    #[test]
    fn met_requirements_pass_everywhere() {
        assert!(gate(true, false, "unused"));
        assert!(gate(true, true, "unused"));
    }

    #[test]
    fn unmet_requirements_skip_on_a_developer_machine() {
        assert!(!gate(
            false,
            false,
            "(self-test of the skip path: nothing is skipped)"
        ));
    }

    #[test]
    #[should_panic(expected = "needs `no-such-tool`: apt-get install -y x")]
    fn unmet_requirements_fail_under_ci() {
        gate(false, true, "needs `no-such-tool`: apt-get install -y x");
    }

    fn gated_on_a_missing_tool(reached: &mut bool) {
        let _path = crate::require_tool!("kiln-no-such-tool-anywhere");
        *reached = true;
    }

    #[test]
    fn require_tool_returns_from_the_test() {
        if in_ci() {
            // Under CI the macro panics instead: `unmet_requirements_fail_under_ci`.
            return;
        }
        let mut reached = false;
        gated_on_a_missing_tool(&mut reached);
        assert!(!reached, "require_tool! did not return for a missing tool");
    }

    #[test]
    fn tools_are_found_on_path_and_hints_name_packages() {
        assert!(find_tool("sh").is_some());
        assert!(find_tool("/bin/sh").is_some());
        assert!(find_tool("kiln-no-such-tool-anywhere").is_none());
        assert!(install_hint("htpasswd").contains("apache2-utils"));
        assert!(install_hint("busybox").contains("busybox-static"));
    }
}
