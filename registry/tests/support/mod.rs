//! Test harness: a real `docker-registry` (CNCF distribution) on a free
//! loopback port with temp storage, optional htpasswd or token auth (with a
//! small token server), hand-built images and `skopeo` helpers.
//!
//! Tests that need `docker-registry`, `skopeo`, `htpasswd` or `openssl` fail
//! with a message naming the package when the binary is missing: CI
//! installs them, so nothing is silently skipped.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use kiln_cache::{Digest, Store, sha256_of};

pub const DOCKER_REGISTRY: &str = "/usr/bin/docker-registry";

/// Panic with an actionable message if `bin` is not installed.
pub fn require(bin: &str, package: &str) -> PathBuf {
    let found = if bin.contains('/') {
        Path::new(bin).is_file().then(|| PathBuf::from(bin))
    } else {
        std::env::var_os("PATH").and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(bin))
                .find(|c| c.is_file())
        })
    };
    found.unwrap_or_else(|| {
        panic!(
            "this test needs `{bin}`, which is not installed: apt-get install -y {package} \
             (CI installs it; tests are never skipped)"
        )
    })
}

/// How the test registry authenticates.
pub enum Auth {
    None,
    Htpasswd { user: String, pass: String },
    Token(Arc<TokenServer>),
}

/// A running `docker-registry`, killed on drop.
pub struct Registry {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Mutex<Option<Child>>,
    config: PathBuf,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Registry {
    pub fn start(auth: &Auth) -> Registry {
        require(DOCKER_REGISTRY, "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let storage = dir.path().join("storage");
        let auth_yaml = match auth {
            Auth::None => String::new(),
            Auth::Htpasswd { user, pass } => {
                require("htpasswd", "apache2-utils");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, pass])
                    .output()
                    .unwrap();
                assert!(out.status.success(), "htpasswd failed");
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
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\nstorage:\n  \
                 filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  \
                 addr: 127.0.0.1:{port}\n{auth_yaml}",
                storage.display()
            ),
        )
        .unwrap();
        let r = Registry {
            dir,
            port,
            child: Mutex::new(None),
            config,
        };
        r.restart();
        r
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:PORT/<repo_tag>`
    pub fn reference(&self, repo_tag: &str) -> kiln_registry::Reference {
        kiln_registry::Reference::parse(&format!("{}/{repo_tag}", self.host())).unwrap()
    }

    /// What the registry logged since its last (re)start.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
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
        *self.child.lock().unwrap() = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(status) = self
                .child
                .lock()
                .unwrap()
                .as_mut()
                .and_then(|c| c.try_wait().unwrap())
            {
                panic!(
                    "docker-registry exited with {status}: {}",
                    std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap()
                );
            }
            assert!(Instant::now() < deadline, "docker-registry did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Path of the link file recording that `repo` holds `digest`.
    pub fn blob_link(&self, repo: &str, digest: &Digest) -> PathBuf {
        self.dir
            .path()
            .join("storage/docker/registry/v2/repositories")
            .join(repo)
            .join("_layers/sha256")
            .join(digest.hex())
            .join("link")
    }

    /// Path of a blob's data in the registry's storage.
    pub fn blob_data(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
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

/// Deterministic pseudo-random bytes (xorshift), barely compressible.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A gzip tar layer with one file: returns (compressed, diff_id).
pub fn layer(name: &str, content: &[u8]) -> (Vec<u8>, Digest) {
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, name, content).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256_of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), diff_id)
}

/// A hand-built image in a store.
pub struct Image {
    pub manifest: Digest,
    pub manifest_bytes: Vec<u8>,
    pub config: Digest,
    pub config_bytes: Vec<u8>,
    /// (digest, bytes) of each layer, bottom first.
    pub layers: Vec<(Digest, Vec<u8>)>,
}

/// Build an OCI image from `layers` (compressed bytes + diff ids) into
/// `store`; `tag` makes the config (hence the manifest) unique.
pub fn image(store: &Store, layers: &[(Vec<u8>, Digest)], arch: &str, tag: &str) -> Image {
    let diff_ids: Vec<String> = layers.iter().map(|(_, d)| d.to_string()).collect();
    let config_bytes = serde_json::to_vec(&serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"], "Labels": {"test": tag}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .unwrap();
    let config = store.put_blob(&config_bytes).unwrap();
    let mut descs = Vec::new();
    let mut out_layers = Vec::new();
    for (bytes, _) in layers {
        let d = store.put_blob(bytes).unwrap();
        descs.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": d.to_string(), "size": bytes.len(),
        }));
        out_layers.push((d, bytes.clone()));
    }
    let manifest_bytes = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config.to_string(), "size": config_bytes.len()},
        "layers": descs,
    }))
    .unwrap();
    let manifest = store.put_blob(&manifest_bytes).unwrap();
    Image {
        manifest,
        manifest_bytes,
        config,
        config_bytes,
        layers: out_layers,
    }
}

/// Write an OCI layout at `dir` holding `blobs` with `index.json` pointing
/// at `top` (a manifest or index) under the name `tag`.
pub fn oci_layout(dir: &Path, blobs: &[&[u8]], top: (&Digest, u64, &str), tag: &str) {
    let b = dir.join("blobs/sha256");
    std::fs::create_dir_all(&b).unwrap();
    for blob in blobs {
        std::fs::write(b.join(sha256_of(blob).hex()), blob).unwrap();
    }
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": top.2, "digest": top.0.to_string(), "size": top.1,
                       "annotations": {"org.opencontainers.image.ref.name": tag}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
}

/// Run skopeo with `args` (policy checks off); panics with its stderr on
/// failure, returns stdout.
pub fn skopeo(args: &[&str]) -> String {
    let bin = require("skopeo", "skopeo");
    let out = Command::new(bin)
        .arg("--insecure-policy")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "skopeo {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `skopeo inspect` of `docker://<reference>` as JSON.
pub fn inspect(reference: &str, raw: bool, creds: Option<&str>) -> serde_json::Value {
    let target = format!("docker://{reference}");
    let mut args = vec!["inspect", "--tls-verify=false"];
    if raw {
        args.push("--raw");
    }
    if let Some(c) = creds {
        args.extend(["--creds", c]);
    }
    args.push(&target);
    serde_json::from_str(&skopeo(&args)).unwrap()
}

/// A minimal bearer token service for distribution's `auth: token`:
/// RS256 JWTs signed with a self-signed key via `openssl`, the certificate
/// in the `x5c` header. Grants every requested scope to `user:pass`;
/// anonymous requests get pull access only.
pub struct TokenServer {
    pub port: u16,
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
    pub const SERVICE: &str = "kiln-test-registry";
    pub const ISSUER: &str = "kiln-test-issuer";

    pub fn start(user: &str, pass: &str) -> Arc<TokenServer> {
        let openssl = require("openssl", "openssl");
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
        let url = reqwest::Url::parse(&format!("http://x{target}")).unwrap();
        let scopes: Vec<String> = url
            .query_pairs()
            .filter(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
            .collect();
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

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

fn rand_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Called on every progress event with the digest and bytes done.
pub type OnProgress<'a> = Box<dyn Fn(&str, u64) + Sync + 'a>;

/// A [`kiln_registry::Progress`] that records events.
#[derive(Default)]
pub struct Recorder<'a> {
    pub done: Mutex<BTreeMap<String, String>>,
    pub on_progress: Option<OnProgress<'a>>,
}

impl kiln_registry::Progress for Recorder<'_> {
    fn blob_started(&self, _: &str, _: u64, _: &str) {}
    fn blob_progress(&self, digest: &str, bytes: u64) {
        if let Some(f) = &self.on_progress {
            f(digest, bytes);
        }
    }
    fn blob_done(&self, digest: &str, how: &str) {
        self.done
            .lock()
            .unwrap()
            .insert(digest.to_owned(), how.to_owned());
    }
}
