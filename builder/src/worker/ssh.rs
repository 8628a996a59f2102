//! `RUN --mount=type=ssh`: the agent forwarded into a step, as BuildKit's `sshforward`
//! does it. The step never sees the host's socket: kiln listens on a socket of its own
//! (in the store's `tmp/`, with the mount's mode and owner), which the sandbox binds at
//! the target, and copies each connection to the agent given with `--ssh` and back. So
//! `uid=`/`mode=` apply without touching the user's socket, and the host path stays
//! private. The proxy stops when the step ends. Nothing of the agent reaches a cache
//! key (the mount's id and options do, through the definition).
//!
//! `--ssh ID=KEYFILE[,KEYFILE...]` (buildx's key files): [`KeyAgent`] runs the
//! system's `ssh-agent` on a private socket for the build, loads the keys into it, and
//! stops it when the build ends; the id then forwards that socket like any other.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A socket that forwards every connection to an SSH agent, for one step.
pub struct AgentProxy {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
    /// Holds the socket's directory until the proxy is dropped.
    _dir: tempfile::TempDir,
}

impl AgentProxy {
    /// Listens on `dir/agent.sock` (mode `mode`, owner `uid:gid`) and forwards to the
    /// agent at `agent`.
    pub fn start(
        dir: tempfile::TempDir,
        agent: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<AgentProxy> {
        let path = dir.path().join("agent.sock");
        let listener = UnixListener::bind(&path)?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))?;
        if crate::snapshots::is_root() {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))?;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let stopped = stop.clone();
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = conn else { continue };
                let agent = agent.clone();
                // One thread per direction; each ends when its side closes.
                std::thread::spawn(move || {
                    let Ok(upstream) = UnixStream::connect(&agent) else {
                        return;
                    };
                    let (Ok(c2), Ok(u2)) = (client.try_clone(), upstream.try_clone()) else {
                        return;
                    };
                    let back = std::thread::spawn(move || pipe(u2, c2));
                    pipe(client, upstream);
                    let _ = back.join();
                });
            }
        });
        Ok(AgentProxy {
            path,
            stop,
            accept: Some(accept),
            _dir: dir,
        })
    }

    /// The proxy's socket on the host (what the sandbox binds).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for AgentProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wakes the accept loop, which sees the flag and ends.
        let _ = UnixStream::connect(&self.path);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

/// Copies `from` to `to` until `from` ends, then closes `to`'s write side.
fn pipe(mut from: UnixStream, mut to: UnixStream) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

/// Why the agent for `--ssh ID=KEYFILE` could not serve the keys.
#[derive(Debug, thiserror::Error)]
pub enum KeyAgentError {
    /// No `ssh-agent` (or `ssh-add`, `ssh-keygen`) on `PATH`.
    #[error(
        "--ssh {id}=KEYFILE serves key files through the system's {tool}, which is not installed (apt-get install openssh-client)"
    )]
    Missing {
        /// The `--ssh` id.
        id: String,
        /// The command not found.
        tool: &'static str,
    },
    /// A key file is protected by a passphrase, which kiln cannot ask for.
    #[error(
        "--ssh {id}: {} is protected by a passphrase, which kiln cannot ask for: add it to an agent (ssh-add {}) and give --ssh {id}=$SSH_AUTH_SOCK",
        path.display(),
        path.display()
    )]
    Passphrase {
        /// The `--ssh` id.
        id: String,
        /// The key file.
        path: PathBuf,
    },
    /// A key file could not be read as a private key.
    #[error("--ssh {id}: {} is not a usable private key: {reason}", path.display())]
    BadKey {
        /// The `--ssh` id.
        id: String,
        /// The key file.
        path: PathBuf,
        /// What `ssh-keygen` or `ssh-add` said.
        reason: String,
    },
    /// The agent did not start.
    #[error("--ssh {id}: ssh-agent did not start: {reason}")]
    Start {
        /// The `--ssh` id.
        id: String,
        /// Why.
        reason: String,
    },
}

/// An `ssh-agent` holding `--ssh ID=KEYFILE`'s keys for one build: on a socket in a
/// private directory, in a session of its own, killed (and its socket removed) when
/// dropped, and killed by the kernel if kiln dies first.
pub struct KeyAgent {
    child: std::process::Child,
    sock: PathBuf,
    /// Holds the socket's directory (mode 0700) until the agent is dropped.
    _dir: tempfile::TempDir,
}

impl KeyAgent {
    /// Starts an agent on `dir/agent.sock` and adds `keys` to it, for the id `id`.
    pub fn start(
        dir: tempfile::TempDir,
        id: &str,
        keys: &[PathBuf],
    ) -> Result<KeyAgent, KeyAgentError> {
        // Each key is checked without a passphrase first: `ssh-add` would prompt for
        // one (or fail obscurely without a terminal), `ssh-keygen -y -P ''` just fails.
        for key in keys {
            let out = helper("ssh-keygen")
                .args(["-y", "-P", "", "-f"])
                .arg(key)
                .output()
                .map_err(|e| spawn_error(e, id, "ssh-keygen"))?;
            if !out.status.success() {
                let said = one_line(&out.stderr);
                if said.contains("passphrase") {
                    return Err(KeyAgentError::Passphrase {
                        id: id.to_string(),
                        path: key.clone(),
                    });
                }
                return Err(KeyAgentError::BadKey {
                    id: id.to_string(),
                    path: key.clone(),
                    reason: said,
                });
            }
        }
        let sock = dir.path().join("agent.sock");
        let child = helper("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| spawn_error(e, id, "ssh-agent"))?;
        let mut agent = KeyAgent {
            child,
            sock,
            _dir: dir,
        };
        agent.wait_for_socket(id)?;
        for key in keys {
            let out = helper("ssh-add")
                .arg("-q")
                .arg(key)
                .env("SSH_AUTH_SOCK", &agent.sock)
                .output()
                .map_err(|e| spawn_error(e, id, "ssh-add"))?;
            if !out.status.success() {
                return Err(KeyAgentError::BadKey {
                    id: id.to_string(),
                    path: key.clone(),
                    reason: one_line(&out.stderr),
                });
            }
        }
        Ok(agent)
    }

    /// The agent's socket.
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Waits until the agent listens (its socket appears), or fails if it exits first.
    fn wait_for_socket(&mut self, id: &str) -> Result<(), KeyAgentError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let fail = |reason: String| KeyAgentError::Start {
            id: id.to_string(),
            reason,
        };
        loop {
            if UnixStream::connect(&self.sock).is_ok() {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut said = String::new();
                if let Some(mut e) = self.child.stderr.take() {
                    let _ = e.read_to_string(&mut said);
                }
                return Err(fail(format!("it exited ({status}): {}", said.trim())));
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "{} did not appear within 10s",
                    self.sock.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for KeyAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `tool` as a helper process: its own session (no terminal to prompt on), killed with
/// kiln; no askpass program either.
fn helper(tool: &str) -> std::process::Command {
    let mut cmd = std::process::Command::new(tool);
    cmd.stdin(std::process::Stdio::null())
        .env_remove("SSH_ASKPASS")
        .env_remove("DISPLAY")
        .env("SSH_ASKPASS_REQUIRE", "never");
    kiln_sandbox::linux::detach_helper(&mut cmd);
    cmd
}

/// A tool's message on one line.
fn one_line(stderr: &[u8]) -> String {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

fn spawn_error(e: io::Error, id: &str, tool: &'static str) -> KeyAgentError {
    if e.kind() == io::ErrorKind::NotFound {
        KeyAgentError::Missing {
            id: id.to_string(),
            tool,
        }
    } else {
        KeyAgentError::Start {
            id: id.to_string(),
            reason: format!("running {tool}: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn forwards_both_ways_with_its_own_mode() {
        let tmp = tempfile::tempdir().unwrap();
        let agent_path = tmp.path().join("agent");
        let agent = UnixListener::bind(&agent_path).unwrap();
        // A fake agent: answers each request with its bytes reversed.
        let served = std::thread::spawn(move || {
            for _ in 0..2 {
                let (mut s, _) = agent.accept().unwrap();
                let mut req = Vec::new();
                s.read_to_end(&mut req).unwrap();
                req.reverse();
                s.write_all(&req).unwrap();
            }
        });
        let dir = tempfile::tempdir().unwrap();
        let proxy = AgentProxy::start(dir, &agent_path, 0o600, 0, 0).unwrap();
        assert_eq!(
            std::fs::metadata(proxy.path()).unwrap().mode() & 0o777,
            0o600
        );
        for req in [&b"abc"[..], b"\x00\x00\x00\x01\x0b"] {
            let mut c = UnixStream::connect(proxy.path()).unwrap();
            c.write_all(req).unwrap();
            c.shutdown(Shutdown::Write).unwrap();
            let mut got = Vec::new();
            c.read_to_end(&mut got).unwrap();
            let mut want = req.to_vec();
            want.reverse();
            assert_eq!(got, want);
        }
        served.join().unwrap();
        let path = proxy.path().to_path_buf();
        drop(proxy);
        assert!(!path.exists(), "the socket goes with the proxy");
    }
}
