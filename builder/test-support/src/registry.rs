//! A real `docker-registry` (CNCF distribution) on a free loopback port with temporary
//! storage, anonymous or with htpasswd or bearer-token auth (a small token server signing
//! JWTs with `openssl`). The only registry launcher of the test suites: kiln-registry's
//! and kiln-builder's tests both use it.
//!
//! A test checks for the tools first (`require_tool!("docker-registry")`, and `htpasswd`
//! or `openssl` for auth); the launcher itself panics with an install hint if one is
//! missing.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

use crate::require::tool_path;

/// Where Debian's `docker-registry` package installs the registry.
pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// A free TCP port on 127.0.0.1 (bound, then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How the test registry authenticates.
pub enum Auth {
    /// Anonymous: anyone pulls and pushes.
    None,
    /// Basic auth against an htpasswd file holding one user.
    Htpasswd {
        /// The user name.
        user: String,
        /// Its password.
        pass: String,
    },
    /// Bearer tokens from this token server.
    Token(Arc<TokenServer>),
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    /// Its configuration, storage (`storage/`) and log (`registry.log`).
    pub dir: tempfile::TempDir,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    child: Mutex<Option<Child>>,
    config: PathBuf,
    /// Serving TLS ([`Registry::start_tls`]).
    tls: bool,
}

impl Registry {
    /// Starts a registry with `auth`; returns once it accepts connections, or panics
    /// with its log.
    pub fn start(auth: &Auth) -> Registry {
        Registry::start_with(auth, false, None)
    }

    /// Starts a registry with `auth` that logs every request (see
    /// [`Registry::requests`]).
    pub fn start_logged(auth: &Auth) -> Registry {
        Registry::start_with(auth, true, None)
    }

    /// Starts an anonymous registry serving TLS with `cert` and `key` (PEM). Its
    /// [`Registry::host`] is `0.0.0.0:PORT`: that reaches this host, and a client speaks
    /// TLS to it (only loopback names get plain HTTP).
    pub fn start_tls(cert: &Path, key: &Path) -> Registry {
        Registry::start_with(&Auth::None, false, Some((cert, key)))
    }

    fn start_with(auth: &Auth, access_log: bool, tls: Option<(&Path, &Path)>) -> Registry {
        tool_path(DOCKER_REGISTRY);
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, pass } => {
                let out = Command::new(tool_path("htpasswd"))
                    .args(["-Bbn", user, pass])
                    .output()
                    .unwrap();
                assert!(
                    out.status.success(),
                    "htpasswd failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let file = dir.path().join("htpasswd");
                std::fs::write(&file, out.stdout).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                    file.display()
                )
            }
            Auth::Token(ts) => format!(
                "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: {}\n    \
                 issuer: {}\n    rootcertbundle: {}\n",
                ts.port,
                TokenServer::SERVICE,
                TokenServer::ISSUER,
                ts.cert.display()
            ),
        };
        let tls_yaml = tls
            .map(|(cert, key)| {
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n",
                    cert.display(),
                    key.display()
                )
            })
            .unwrap_or_default();
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: {}\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  \
                 addr: 127.0.0.1:{port}\n{tls_yaml}{auth_yaml}",
                !access_log,
                storage.display()
            ),
        )
        .unwrap();
        let r = Registry {
            dir,
            port,
            child: Mutex::new(None),
            config,
            tls: tls.is_some(),
        };
        r.restart();
        r
    }

    /// `127.0.0.1:PORT` (`0.0.0.0:PORT` for TLS, see [`Registry::start_tls`]).
    pub fn host(&self) -> String {
        let ip = if self.tls { "0.0.0.0" } else { "127.0.0.1" };
        format!("{ip}:{}", self.port)
    }

    /// `HOST/<repo_tag>`: an image name in this registry.
    pub fn name(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.host())
    }

    /// What the registry logged since its last (re)start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The requests logged since the last (re)start of a registry started with
    /// [`Registry::start_logged`], as `(METHOD, PATH, STATUS)` in order.
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        self.log()
            .lines()
            .filter_map(|l| {
                // Apache combined format: ... "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 ...
                let (_, rest) = l.split_once('"')?;
                let (req, after) = rest.split_once('"')?;
                let mut r = req.split_whitespace();
                let (method, path) = (r.next()?, r.next()?);
                let status = after.split_whitespace().next()?.parse().ok()?;
                Some((method.to_owned(), path.to_owned(), status))
            })
            .collect()
    }

    /// Kill the registry process (storage is kept).
    pub fn kill(&self) {
        if let Some(mut c) = self.child.lock().unwrap().take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// (Re)start the registry on the same port and storage; waits until it
    /// accepts connections.
    pub fn restart(&self) {
        self.kill();
        let log = std::fs::File::create(self.dir.path().join("registry.log")).unwrap();
        let child = Command::new(DOCKER_REGISTRY)
            .arg("serve")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start docker-registry");
        let mut guard = self.child.lock().unwrap();
        let child = guard.insert(child);
        crate::wait::for_port(
            child,
            self.port,
            Duration::from_secs(20),
            "docker-registry",
            || self.log(),
        );
    }

    /// Path of the link file recording that `repo` holds `digest`.
    pub fn blob_link(&self, repo: &str, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/repositories")
            .join(repo)
            .join("_layers/sha256")
            .join(hex)
            .join("link")
    }

    /// Path of a blob's data in the registry's storage.
    pub fn blob_data(&self, hex: &str) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal bearer token service for distribution's `auth: token`:
/// RS256 JWTs signed with a self-signed key via `openssl`, the certificate
/// in the `x5c` header. Grants every requested scope to `user:pass`;
/// anonymous requests get pull access only.
pub struct TokenServer {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The certificate the registry checks tokens with.
    pub cert: PathBuf,
    key: PathBuf,
    cert_der_b64: String,
    user: String,
    pass: String,
    /// Every request's scopes (joined with a space), in order; "401" for
    /// refused ones.
    pub requests: Mutex<Vec<String>>,
    _dir: tempfile::TempDir,
}

impl TokenServer {
    /// The `service` the registry and its tokens name.
    pub const SERVICE: &str = "kiln-test-registry";
    /// The tokens' issuer.
    pub const ISSUER: &str = "kiln-test-issuer";

    /// Starts a token server granting every scope to `user:pass` (pull only to
    /// anonymous requests), serving until dropped.
    pub fn start(user: &str, pass: &str) -> Arc<TokenServer> {
        let openssl = tool_path("openssl");
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        let cert = dir.path().join("cert.pem");
        let ok = Command::new(&openssl)
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            ])
            .args(["-subj", "/CN=kiln-test-token"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(ok.success(), "openssl req failed");
        let der = Command::new(&openssl)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&cert)
            .output()
            .unwrap();
        assert!(der.status.success());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ts = Arc::new(TokenServer {
            port: listener.local_addr().unwrap().port(),
            cert,
            key,
            cert_der_b64: STANDARD.encode(der.stdout),
            user: user.into(),
            pass: pass.into(),
            requests: Mutex::new(Vec::new()),
            _dir: dir,
        });
        let weak = Arc::downgrade(&ts);
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Some(ts) = weak.upgrade() else { return };
                if let Ok(conn) = conn {
                    let _ = ts.serve(conn);
                }
            }
        });
        ts
    }

    fn serve(&self, mut conn: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(conn.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let target = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
        let mut auth = None;
        let mut content_length = 0usize;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                match k.to_ascii_lowercase().as_str() {
                    "authorization" => auth = Some(v.trim().to_owned()),
                    "content-length" => content_length = v.trim().parse().unwrap_or(0),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; content_length];
        reader.read_exact(&mut body)?;
        let scopes = query_values(&target, "scope");
        let authed = match auth.as_deref().and_then(|a| a.strip_prefix("Basic ")) {
            None => false,
            Some(b) => {
                let want = STANDARD.encode(format!("{}:{}", self.user, self.pass));
                if b != want {
                    self.requests.lock().unwrap().push("401".into());
                    let body = r#"{"errors":[{"code":"UNAUTHORIZED","message":"invalid username or password"}]}"#;
                    return write!(
                        conn,
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
                true
            }
        };
        self.requests.lock().unwrap().push(scopes.join(" "));
        let mut access = Vec::new();
        for s in &scopes {
            let parts: Vec<&str> = s.splitn(3, ':').collect();
            if parts.len() != 3 {
                continue;
            }
            let actions: Vec<&str> = parts[2]
                .split(',')
                .filter(|a| authed || *a == "pull")
                .collect();
            access
                .push(serde_json::json!({"type": parts[0], "name": parts[1], "actions": actions}));
        }
        let token = self.jwt(
            &serde_json::Value::Array(access),
            if authed { &self.user } else { "" },
        );
        let body = serde_json::json!({"token": token, "expires_in": 300}).to_string();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        )
    }

    fn jwt(&self, access: &serde_json::Value, sub: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let header = serde_json::json!({"alg": "RS256", "typ": "JWT", "x5c": [self.cert_der_b64]});
        let claims = serde_json::json!({
            "iss": Self::ISSUER, "sub": sub, "aud": Self::SERVICE,
            "exp": now + 300, "nbf": now - 10, "iat": now,
            "jti": format!("{now}-{}", rand_id()), "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let mut child = Command::new("openssl")
            .args(["dgst", "-sha256", "-sign"])
            .arg(&self.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(signing_input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "openssl dgst -sign failed");
        format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(out.stdout))
    }

    /// The scopes of every request so far ("401" for refused credentials).
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

/// The values of `key` in the query of a request target, percent- and `+`-decoded.
fn query_values(target: &str, key: &str) -> Vec<String> {
    let Some((_, query)) = target.split_once('?') else {
        return Vec::new();
    };
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| percent_decode(v))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_requests_scopes_are_decoded() {
        assert_eq!(
            query_values(
                "/token?service=s&scope=repository%3Ateam%2Fapp%3Apull%2Cpush&scope=a+b%2",
                "scope"
            ),
            ["repository:team/app:pull,push", "a b%2"]
        );
        assert!(query_values("/token", "scope").is_empty());
    }
}
