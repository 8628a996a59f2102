//! ssh for tests: an `ssh-agent` holding a fresh key, and an `sshd` on a free loopback
//! port with its own configuration and host key, letting that key in (for `--ssh`,
//! `RUN --mount=type=ssh` and `ADD` of `ssh://` git repositories).

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{Workspace, run_ok, tool_path, wait};

/// An `ssh-agent` in the foreground on its own socket, killed on drop.
pub struct Agent {
    _child: crate::KillOnDrop,
    /// Its socket (`SSH_AUTH_SOCK`).
    pub sock: PathBuf,
    /// The public key it holds (`ssh-ed25519 AAAA... comment`).
    pub public_key: String,
}

impl Agent {
    /// Starts an agent at `NAME.sock` in `ws` and adds a new ed25519 key with comment
    /// `comment` (needs `ssh-agent`, `ssh-keygen`, `ssh-add`).
    pub fn start(ws: &Workspace, name: &str, comment: &str) -> Agent {
        let sock = ws.path(&format!("{name}.sock"));
        let child = Command::new(tool_path("ssh-agent"))
            .arg("-D")
            .arg("-a")
            .arg(&sock)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("ssh-agent (apt-get install openssh-client)");
        let mut agent = Agent {
            _child: crate::KillOnDrop(child),
            sock,
            public_key: String::new(),
        };
        wait::until(
            Duration::from_secs(10),
            "ssh-agent's socket",
            || agent.sock.exists().then_some(()),
            String::new,
        );
        let key = ws.path(&format!("{name}.key"));
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
                .arg(&key),
        );
        run_ok(
            Command::new("ssh-add")
                .arg(&key)
                .env("SSH_AUTH_SOCK", &agent.sock),
        );
        agent.public_key = fs::read_to_string(format!("{}.pub", key.display()))
            .unwrap()
            .trim()
            .to_string();
        agent
    }
}

/// An `sshd` (openssh-server) on 127.0.0.1 at a free port, with its own configuration
/// and host key under `DIR` in the workspace, accepting only `authorized` keys and no
/// passwords; killed on drop. Logins are as the user the test runs as (root).
pub struct Sshd {
    _child: crate::KillOnDrop,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// Its log (`sshd -e`).
    pub log: PathBuf,
}

impl Sshd {
    /// Starts one; returns once it accepts connections, or panics with its log.
    pub fn start(ws: &Workspace, dir: &str, authorized: &[&str]) -> Sshd {
        let sshd = tool_path("sshd");
        let port = crate::registry::free_port();
        let config = Sshd::config(ws, dir, authorized, port);
        let log = ws.path(&format!("{dir}/sshd.log"));
        let mut child = Command::new(sshd)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("sshd (apt-get install openssh-server)");
        let read_log = || fs::read_to_string(&log).unwrap_or_default();
        wait::for_port(&mut child, port, Duration::from_secs(10), "sshd", read_log);
        Sshd {
            _child: crate::KillOnDrop(child),
            port,
            log,
        }
    }

    /// Writes the configuration (and a new host key) of an sshd listening on
    /// 127.0.0.1:`port` under `DIR`, for a test that starts sshd itself (in a network
    /// namespace of its own, say); also makes sshd's privilege separation directory.
    pub fn config(ws: &Workspace, dir: &str, authorized: &[&str], port: u16) -> PathBuf {
        let host_key = ws.path(&format!("{dir}/host_key"));
        fs::create_dir_all(ws.path(dir)).unwrap();
        run_ok(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&host_key),
        );
        let keys = ws.write(
            &format!("{dir}/authorized_keys"),
            authorized.join("\n") + "\n",
        );
        // StrictModes off: the workspace is under a world-writable /tmp.
        let config = ws.write(
            &format!("{dir}/sshd_config"),
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile none\n\
                 AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key.display(),
                keys.display()
            ),
        );
        // sshd's privilege separation directory, which a container may not have.
        fs::create_dir_all("/run/sshd").expect("create /run/sshd (needs root)");
        config
    }

    /// What sshd logged.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}
