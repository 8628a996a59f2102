//! kiln's shared test harness, used by the integration tests of kiln-builder and
//! kiln-registry and by root-needing unit tests (a dev-dependency only):
//!
//! - [`require`]: `require_root!()`, `require_tool!(name)`, `require!(cond, why)`. A
//!   missing requirement skips the test with a message on a developer's machine and
//!   fails it when env `CI` is set, so CI never passes a test that did not run;
//!   `needs!(tools...)` is root and those tools.
//! - [`wait`]: waits for an event (a port, a file's age) that fail with the server's log.
//! - [`registry`]: the one `docker-registry` launcher (anonymous, htpasswd or token
//!   auth, with a token server).
//! - [`server`]: a static file server for `ADD <url>`.
//! - [`ssh`]: an `ssh-agent` with a fresh key, an `sshd` on loopback.
//! - [`context`]: a temporary workspace for build contexts, fixtures, commands.
//! - [`store`]: [`KilnStore`], a workspace with a store of its own and the kiln binary
//!   pointed at it (`kiln()`, `build()` with its report).
//! - [`tree`]: tree listings and their differences.

pub mod context;
pub mod data;
pub mod registry;
pub mod require;
pub mod server;
pub mod ssh;
pub mod store;
pub mod tree;
pub mod wait;

pub use context::{Workspace, busybox_context, copy_dir, repo_root, run_ok};
pub use data::noise;
pub use registry::{Auth, Registry, TokenServer};
pub use require::{in_ci, is_root, tool_path};
pub use server::FileServer;
pub use store::{BUSYBOX, Built, KilnStore, kiln_bin, report_step, step_cached};

/// A child process (a test's server or agent) killed and reaped when dropped.
pub(crate) struct KillOnDrop(pub(crate) std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
