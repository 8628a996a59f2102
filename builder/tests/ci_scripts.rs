//! `./test.sh` on a fresh machine: it installs the tools the suite needs when one is
//! missing (root runs `.ci/install.sh`), or says what to run (anyone else); and
//! `.ci/install.sh` installs every tool `.ci/tools.txt` names, Docker included.
//!
//! The scripts run from a copy, with a `PATH` that has none of the tools and a stub in
//! place of `.ci/install.sh`, so nothing is installed for real.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use kiln_test_support::{repo_root, require_root, require_tool};

/// `.ci/tools.txt`: (command, package) pairs.
fn tools() -> Vec<(String, String)> {
    fs::read_to_string(repo_root().join(".ci/tools.txt"))
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let mut w = l.split_whitespace();
            (w.next().unwrap().into(), w.next().unwrap().into())
        })
        .collect()
}

/// A copy of test.sh and .ci/ (install.sh a stub that leaves a mark), readable by anyone,
/// and a bin directory with only what the script itself runs.
struct Copy {
    dir: tempfile::TempDir,
}

impl Copy {
    fn new() -> Copy {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o777)).unwrap();
        fs::create_dir(root.join(".ci")).unwrap();
        fs::copy(repo_root().join("test.sh"), root.join("test.sh")).unwrap();
        fs::copy(
            repo_root().join(".ci/tools.txt"),
            root.join(".ci/tools.txt"),
        )
        .unwrap();
        fs::write(
            root.join(".ci/install.sh"),
            "echo installed > \"$(dirname \"$0\")/../installed\"\n",
        )
        .unwrap();
        let bin = root.join("bin");
        fs::create_dir(&bin).unwrap();
        for tool in ["bash", "dirname", "id", "cat"] {
            let path = kiln_test_support::require::find_tool(tool)
                .unwrap_or_else(|| panic!("{tool} on PATH"));
            std::os::unix::fs::symlink(path, bin.join(tool)).unwrap();
        }
        for p in [root.join(".ci"), bin.clone()] {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        Copy { dir }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Runs `test.sh --check-tools` with the bare PATH, as root or (with `setpriv`)
    /// as nobody.
    fn check_tools(&self, as_nobody: bool) -> Output {
        let bin: PathBuf = self.root().join("bin");
        let mut cmd = if as_nobody {
            let mut c = Command::new(kiln_test_support::tool_path("setpriv"));
            c.args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--",
                "bash",
            ]);
            c
        } else {
            Command::new(bin.join("bash"))
        };
        cmd.arg(self.root().join("test.sh"))
            .arg("--check-tools")
            .env_clear()
            .env("PATH", &bin)
            .output()
            .unwrap()
    }
}

/// The message a user without root gets: every missing tool with its package, and the
/// command to run; nothing is installed and the script goes on.
#[test]
fn test_sh_tells_a_user_what_to_install() {
    require_root!();
    require_tool!("setpriv");
    let copy = Copy::new();
    let out = copy.check_tools(true);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let listed: Vec<String> = tools()
        .into_iter()
        // dockerd is found in /usr/sbin even off PATH, where Debian puts it.
        .filter(|(c, _)| !Path::new("/usr/sbin").join(c).exists())
        .map(|(c, p)| format!("{c} ({p})"))
        .collect();
    assert_eq!(
        err,
        format!(
            "test.sh: missing {}: install them as root with `sudo bash .ci/install.sh`; the tests that need them skip until then\n",
            listed.join(", ")
        )
    );
    assert!(!copy.root().join("installed").exists());
}

/// Root: a missing tool runs `.ci/install.sh`.
#[test]
fn test_sh_installs_as_root() {
    require_root!();
    let copy = Copy::new();
    let out = copy.check_tools(false);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.starts_with("test.sh: missing skopeo (skopeo), "),
        "{err}"
    );
    assert!(err.ends_with(": running .ci/install.sh\n"), "{err}");
    assert_eq!(
        fs::read_to_string(copy.root().join("installed")).unwrap(),
        "installed\n"
    );
}

/// `.ci/install.sh` installs the packages of `.ci/tools.txt` (Docker's `docker.io` among
/// them, for the acceptance test), and on a machine where the suite ran they are all
/// there: `./test.sh --check-tools` has nothing to say.
#[test]
fn install_sh_covers_the_tools() {
    let install = fs::read_to_string(repo_root().join(".ci/install.sh")).unwrap();
    assert!(install.contains("tools.txt"), "{install}");
    let t = tools();
    for want in ["dockerd", "docker-registry", "skopeo", "busybox"] {
        assert!(t.iter().any(|(c, _)| c == want), "{want} in tools.txt");
    }
    assert!(t.iter().any(|(_, p)| p == "docker.io"));
    if kiln_test_support::in_ci() {
        let out = Command::new("bash")
            .arg(repo_root().join("test.sh"))
            .arg("--check-tools")
            .output()
            .unwrap();
        assert!(out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stderr), "");
    }
}
