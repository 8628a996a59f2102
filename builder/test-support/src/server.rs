//! A static file server on 127.0.0.1 (python3's `http.server`), for `ADD <url>` tests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::require::tool_path;

/// Serves a directory over HTTP until dropped.
pub struct FileServer {
    _child: crate::KillOnDrop,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    log: tempfile::NamedTempFile,
}

impl FileServer {
    /// Serves `dir`; returns once the server accepts connections, or panics with its log.
    pub fn start(dir: &Path) -> FileServer {
        let python = tool_path("python3");
        let port = crate::registry::free_port();
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut child = Command::new(python)
            .args(["-m", "http.server", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .spawn()
            .expect("start python3 -m http.server");
        crate::wait::for_port(
            &mut child,
            port,
            Duration::from_secs(20),
            "python3 -m http.server",
            || std::fs::read_to_string(log.path()).unwrap_or_default(),
        );
        FileServer {
            _child: crate::KillOnDrop(child),
            port,
            log,
        }
    }

    /// `http://127.0.0.1:PORT/<path>`
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}/{path}", self.port)
    }

    /// What the server logged (one line per request, and errors).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}
