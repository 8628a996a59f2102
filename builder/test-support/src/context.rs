//! Build contexts and commands: a temporary workspace to write contexts into, the
//! repository's fixtures, and running a command that must succeed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The repository's root (the workspace directory), for `testdata/`.
pub fn repo_root() -> PathBuf {
    // This crate lives at builder/test-support.
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("builder/test-support has two parents")
        .to_path_buf()
}

/// A temporary directory for one test's contexts, stores and outputs, removed on drop.
pub struct Workspace {
    tmp: tempfile::TempDir,
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

impl Workspace {
    /// A fresh, empty workspace.
    pub fn new() -> Workspace {
        Workspace {
            tmp: tempfile::tempdir().unwrap(),
        }
    }

    /// `rel` inside the workspace (not created).
    pub fn path(&self, rel: &str) -> PathBuf {
        self.tmp.path().join(rel)
    }

    /// A build context directory `name` holding `dockerfile` as its `Dockerfile`.
    pub fn context(&self, name: &str, dockerfile: &str) -> PathBuf {
        let ctx = self.path(name);
        fs::create_dir_all(&ctx).unwrap();
        fs::write(ctx.join("Dockerfile"), dockerfile).unwrap();
        ctx
    }

    /// Writes `content` at `rel` inside the workspace, creating parent directories.
    pub fn write(&self, rel: &str, content: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, content).unwrap();
        p
    }
}

/// `cp -a FROM TO`: a copy that keeps modes, owners, links and xattrs.
pub fn copy_dir(from: &Path, to: &Path) {
    run_ok(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Makes at `dest` the build context of the busybox base (`testdata/bases/busybox`: its
/// Dockerfile and a root filesystem made from the host's busybox-static); panics naming
/// what is missing.
pub fn busybox_context(dest: &Path) {
    let base = repo_root().join("testdata/bases/busybox");
    copy_dir(&base, dest);
    let st = Command::new("bash")
        .arg(base.join("make-rootfs.sh"))
        .arg(dest.join("rootfs"))
        .status()
        .expect("running make-rootfs.sh");
    assert!(
        st.success(),
        "make-rootfs.sh failed (is busybox-static installed?)"
    );
}

/// Runs `cmd`; panics with its output unless it succeeds; returns its stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_root_holds_the_fixtures() {
        assert!(repo_root().join("testdata/bases/busybox").is_dir());
    }

    #[test]
    fn contexts_are_written_in_the_workspace() {
        let ws = Workspace::new();
        let ctx = ws.context("app", "FROM scratch\n");
        ws.write("app/src/a.txt", "a");
        assert_eq!(
            fs::read_to_string(ctx.join("Dockerfile")).unwrap(),
            "FROM scratch\n"
        );
        assert_eq!(fs::read_to_string(ctx.join("src/a.txt")).unwrap(), "a");
        copy_dir(&ctx, &ws.path("copy"));
        assert!(ws.path("copy/src/a.txt").is_file());
    }

    #[test]
    #[should_panic(expected = "failed (exit status: 2)")]
    fn run_ok_fails_with_the_output() {
        run_ok(Command::new("sh").args(["-c", "echo oops >&2; exit 2"]));
    }
}
