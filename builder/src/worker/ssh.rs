//! `RUN --mount=type=ssh`: the agent forwarded into a step, as BuildKit's `sshforward`
//! does it. The step never sees the host's socket: kiln listens on a socket of its own
//! (in the store's `tmp/`, with the mount's mode and owner), which the sandbox binds at
//! the target, and copies each connection to the agent given with `--ssh` and back. So
//! `uid=`/`mode=` apply without touching the user's socket, and the host path stays
//! private. The proxy stops when the step ends. Nothing of the agent reaches a cache
//! key (the mount's id and options do, through the definition).

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

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
