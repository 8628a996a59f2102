//! `ADD <url>`: downloads into the store's temp area, hashed as they stream, verified
//! against `--checksum`, kept for the rest of the build so the cache key and the step
//! share one download. Requests follow the registry client's timeouts
//! ([`kiln_registry::net`]): a server that stalls or trickles is given up, retried, then
//! reported as stalled.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use kiln_oci::digest::Hashing;
use kiln_registry::net::Timeouts;

/// Why an `ADD <url>` download failed: one line naming the URL.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The HTTP client could not be made.
    #[error("creating the HTTP client: {0}")]
    Client(String),
    /// The server stopped sending (or trickled) for longer than the network timeout.
    #[error("ADD {url}: server stalled: {detail}")]
    Stalled {
        /// The URL.
        url: String,
        /// What stalled and for how long.
        detail: String,
    },
    /// The request failed.
    #[error("ADD {url}: {what}{detail}")]
    Request {
        /// The URL.
        url: String,
        /// What was being done (`reading the body: `), or empty.
        what: &'static str,
        /// The underlying error, as one line.
        detail: String,
    },
    /// The server answered with an error status.
    #[error("ADD {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: reqwest::StatusCode,
    },
    /// `--checksum` names another algorithm than sha256.
    #[error("ADD {url}: only sha256 checksums are supported, got {checksum}")]
    Algorithm {
        /// The URL.
        url: String,
        /// The checksum given.
        checksum: String,
    },
    /// The content does not match `--checksum`.
    #[error("ADD {url}: checksum mismatch: expected {expected}, got {actual}")]
    Checksum {
        /// The URL.
        url: String,
        /// The checksum given.
        expected: String,
        /// The content's.
        actual: String,
    },
    /// Retried failures: the last one.
    #[error("{last} (gave up after {attempts} attempts)")]
    GaveUp {
        /// The last attempt's error.
        last: Box<DownloadError>,
        /// How many attempts were made.
        attempts: u32,
    },
    /// Writing the download into the store's temp area failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T, E = DownloadError> = std::result::Result<T, E>;

/// A finished download.
#[derive(Debug)]
pub struct Downloaded {
    /// The file (removed when the build ends).
    pub path: tempfile::TempPath,
    /// Digest of the content.
    pub digest: kiln_oci::Digest,
    /// `Last-Modified`, used as the file's mtime as Docker does.
    pub last_modified: Option<SystemTime>,
    /// The last path segment of the URL (the name `ADD url dir/` gives the file).
    pub filename: String,
}

/// Downloads of one build, by URL.
pub struct Downloads {
    dir: PathBuf,
    done: Mutex<HashMap<String, Arc<Downloaded>>>,
    timeouts: Timeouts,
    /// Made on the first download: most builds have none.
    client: OnceLock<std::result::Result<reqwest::blocking::Client, String>>,
}

/// The file name `ADD` gives a URL's content when the destination is a directory.
pub fn url_filename(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let after_host = path.splitn(4, '/').nth(3).unwrap_or("");
    after_host
        .rsplit('/')
        .find(|s| !s.is_empty())
        .unwrap_or("index.html")
        .to_string()
}

impl Downloads {
    /// Downloads into `dir` (a directory of the store, so files can be moved cheaply).
    pub fn new(dir: PathBuf) -> Result<Downloads> {
        Ok(Downloads {
            dir,
            done: Mutex::new(HashMap::new()),
            timeouts: Timeouts::default(),
            client: OnceLock::new(),
        })
    }

    /// Uses `timeouts` (`--network-timeout`) for the downloads to come.
    pub fn set_timeouts(&mut self, timeouts: Timeouts) {
        self.timeouts = timeouts;
        self.client = OnceLock::new();
    }

    fn client(&self) -> Result<&reqwest::blocking::Client, (bool, DownloadError)> {
        self.client
            .get_or_init(|| {
                crate::tls::install_crypto_provider();
                self.timeouts
                    .apply(reqwest::blocking::Client::builder())
                    .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| (false, DownloadError::Client(e.clone())))
    }

    /// An error of a request to `url`: a stall says so, in one line.
    fn net_error(
        &self,
        url: &str,
        what: &'static str,
        e: &(dyn std::error::Error + 'static),
    ) -> DownloadError {
        match self.timeouts.stalled(e) {
            Some(detail) => DownloadError::Stalled {
                url: url.to_owned(),
                detail,
            },
            None => DownloadError::Request {
                url: url.to_owned(),
                what,
                // With its causes: reqwest's own message does not say why.
                detail: kiln_solver::error_chain(e),
            },
        }
    }

    /// Fetches `url` once per build; checks `checksum` (`sha256:<hex>`) when given.
    pub fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<Arc<Downloaded>> {
        if let Some(d) = self.done.lock().expect("download lock").get(url) {
            verify(url, &d.digest, checksum)?;
            return Ok(d.clone());
        }
        let mut last_err = None;
        let mut attempts = 0;
        for attempt in 0..3 {
            attempts = attempt + 1;
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << attempt));
            }
            match self.try_fetch(url) {
                Ok(d) => {
                    verify(url, &d.digest, checksum)?;
                    let d = Arc::new(d);
                    self.done
                        .lock()
                        .expect("download lock")
                        .insert(url.to_string(), d.clone());
                    return Ok(d);
                }
                Err((retry, e)) => {
                    last_err = Some(e);
                    if !retry {
                        break;
                    }
                }
            }
        }
        let last = last_err.expect("at least one attempt");
        Err(if attempts > 1 {
            DownloadError::GaveUp {
                last: Box::new(last),
                attempts,
            }
        } else {
            last
        })
    }

    fn try_fetch(&self, url: &str) -> Result<Downloaded, (bool, DownloadError)> {
        let resp = self
            .client()?
            .get(url)
            .send()
            // A refused TLS handshake is not retried (see `tls_refusal`).
            .map_err(|e| {
                let retry = kiln_registry::net::tls_refusal(&e).is_none();
                (retry, self.net_error(url, "", &e))
            })?;
        let status = resp.status();
        if !status.is_success() {
            return Err((
                status.is_server_error(),
                DownloadError::Status {
                    url: url.to_owned(),
                    status,
                },
            ));
        }
        let last_modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        std::fs::create_dir_all(&self.dir).map_err(|e| (false, e.into()))?;
        // Named `<writer>.…` so the store's temp cleaner knows the owner (Store::writer).
        let mut file = tempfile::Builder::new()
            .prefix(&format!("{}.download-", kiln_cache::Store::writer()))
            .tempfile_in(&self.dir)
            .map_err(|e| (false, e.into()))?;
        let mut resp = self.timeouts.watch(resp);
        let mut out = Hashing::new(file.as_file_mut());
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = resp
                .read(&mut buf)
                .map_err(|e| (true, self.net_error(url, "reading the body: ", &e)))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(|e| (false, e.into()))?;
        }
        out.flush().map_err(|e| (false, e.into()))?;
        let (_, digest, _) = out.finish();
        Ok(Downloaded {
            path: file.into_temp_path(),
            digest,
            last_modified,
            filename: url_filename(url),
        })
    }
}

fn verify(url: &str, got: &kiln_oci::Digest, want: Option<&str>) -> Result<()> {
    match want {
        Some(w) if !w.starts_with("sha256:") => Err(DownloadError::Algorithm {
            url: url.to_owned(),
            checksum: w.to_owned(),
        }),
        Some(w) if w != got.as_str() => Err(DownloadError::Checksum {
            url: url.to_owned(),
            expected: w.to_owned(),
            actual: got.to_string(),
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames() {
        assert_eq!(
            url_filename("https://example.com/a/b/file.tar.gz?x=1"),
            "file.tar.gz"
        );
        assert_eq!(url_filename("https://example.com/dir/"), "dir");
        assert_eq!(url_filename("https://example.com"), "index.html");
    }

    #[test]
    fn checksums() {
        let aa = kiln_oci::digest::sha256_digest(b"aa");
        assert!(verify("u", &aa, Some(aa.as_str())).is_ok());
        assert!(verify("u", &aa, None).is_ok());
        let e = verify("u", &aa, Some("sha256:bb")).unwrap_err().to_string();
        assert!(
            e.contains(&format!("checksum mismatch: expected sha256:bb, got {aa}")),
            "{e}"
        );
        assert!(verify("u", &aa, Some("sha512:aa")).is_err());
    }

    /// Issue 9, finding 5: a server on 127.0.0.1 that answers every connection with
    /// `serve` (for at most 20 s); returns its port.
    fn server(serve: fn(&mut std::net::TcpStream)) -> u16 {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(10) {
                let Ok(mut conn) = conn else { return };
                std::thread::spawn(move || {
                    let mut head = [0u8; 4096];
                    let _ = conn.read(&mut head);
                    serve(&mut conn);
                });
            }
        });
        port
    }

    fn stalled_download(serve: fn(&mut std::net::TcpStream)) -> (String, Duration) {
        let port = server(serve);
        let dir = tempfile::tempdir().unwrap();
        let mut d = Downloads::new(dir.path().to_path_buf()).unwrap();
        d.set_timeouts(Timeouts::new(Duration::from_secs(1)));
        let start = std::time::Instant::now();
        let url = format!("http://127.0.0.1:{port}/file");
        let e = d.fetch(&url, None).expect_err("a stalled download fails");
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(&format!("ADD {url}: server stalled: ")),
            "{msg}"
        );
        assert!(msg.ends_with("(gave up after 3 attempts)"), "{msg}");
        (msg, start.elapsed())
    }

    #[test]
    fn issue9_stalled_url_download_ends() {
        let (msg, took) = stalled_download(|conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc");
            std::thread::sleep(Duration::from_secs(20));
        });
        assert!(msg.contains("no data for 1s"), "{msg}");
        // Three attempts of a second, and 1 s + 2 s of backoff.
        assert!(took < Duration::from_secs(12), "{took:?}");
        let (msg, took) = stalled_download(|_| std::thread::sleep(Duration::from_secs(20)));
        assert!(msg.contains("no response for 1s"), "{msg}");
        assert!(took < Duration::from_secs(12), "{took:?}");
    }

    /// A refused TLS handshake is not tried again, and the error says why it failed.
    #[test]
    fn a_refused_tls_handshake_is_not_retried() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
        crate::tls::install_crypto_provider();
        // Plain HTTP in answer to the TLS hello.
        let port = server(|conn| {
            CONNECTIONS.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        });
        let dir = tempfile::tempdir().unwrap();
        let d = Downloads::new(dir.path().to_path_buf()).unwrap();
        // 0.0.0.0 reaches this host.
        let url = format!("https://0.0.0.0:{port}/file");
        let e = d.fetch(&url, None).expect_err("no TLS there");
        let msg = e.to_string();
        assert!(matches!(e, DownloadError::Request { .. }), "{msg}");
        assert!(msg.starts_with(&format!("ADD {url}: ")), "{msg}");
        assert!(msg.contains("corrupt message"), "rustls' cause: {msg}");
        assert_eq!(CONNECTIONS.load(Ordering::SeqCst), 1, "{msg}");
    }

    #[test]
    fn issue9_trickled_url_download_ends() {
        let (msg, took) = stalled_download(|conn| {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
            for _ in 0..60 {
                if conn.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        });
        assert!(msg.contains("bytes/s"), "{msg}");
        assert!(took < Duration::from_secs(15), "{took:?}");
    }
}
