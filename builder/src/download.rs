//! `ADD <url>`: downloads into the store's temp area, hashed as they stream, verified
//! against `--checksum`, kept for the rest of the build so the cache key and the step
//! share one download.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, anyhow, bail};
use sha2::{Digest as _, Sha256};

/// A finished download.
#[derive(Debug)]
pub struct Downloaded {
    /// The file (removed when the build ends).
    pub path: tempfile::TempPath,
    /// `sha256:` of the content.
    pub digest: String,
    /// `Last-Modified`, used as the file's mtime as Docker does.
    pub last_modified: Option<SystemTime>,
    /// The last path segment of the URL (the name `ADD url dir/` gives the file).
    pub filename: String,
}

/// Downloads of one build, by URL.
pub struct Downloads {
    dir: PathBuf,
    done: Mutex<HashMap<String, Arc<Downloaded>>>,
    client: reqwest::blocking::Client,
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
        crate::tls::install_crypto_provider();
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(30))
            .timeout(Duration::from_secs(3600))
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("creating the HTTP client")?;
        Ok(Downloads {
            dir,
            done: Mutex::new(HashMap::new()),
            client,
        })
    }

    /// Fetches `url` once per build; checks `checksum` (`sha256:<hex>`) when given.
    pub fn fetch(&self, url: &str, checksum: Option<&str>) -> Result<Arc<Downloaded>> {
        if let Some(d) = self.done.lock().expect("download lock").get(url) {
            verify(url, &d.digest, checksum)?;
            return Ok(d.clone());
        }
        let mut last_err = None;
        for attempt in 0..3 {
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
        Err(last_err.unwrap_or_else(|| anyhow!("download of {url} failed")))
    }

    fn try_fetch(&self, url: &str) -> std::result::Result<Downloaded, (bool, anyhow::Error)> {
        let mut resp = self
            .client
            .get(url)
            .send()
            .map_err(|e| (true, anyhow!("ADD {url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err((
                status.is_server_error(),
                anyhow!("ADD {url}: HTTP {status}"),
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
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = resp
                .read(&mut buf)
                .map_err(|e| (true, anyhow!("ADD {url}: reading the body: {e}")))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            file.write_all(&buf[..n]).map_err(|e| (false, e.into()))?;
        }
        file.flush().map_err(|e| (false, e.into()))?;
        let digest = format!("sha256:{}", crate::image::hex(&hasher.finalize()));
        Ok(Downloaded {
            path: file.into_temp_path(),
            digest,
            last_modified,
            filename: url_filename(url),
        })
    }
}

fn verify(url: &str, got: &str, want: Option<&str>) -> Result<()> {
    match want {
        Some(w) if !w.starts_with("sha256:") => {
            bail!("ADD {url}: only sha256 checksums are supported, got {w}")
        }
        Some(w) if w != got => bail!("ADD {url}: checksum mismatch: expected {w}, got {got}"),
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
        assert!(verify("u", "sha256:aa", Some("sha256:aa")).is_ok());
        assert!(verify("u", "sha256:aa", None).is_ok());
        let e = verify("u", "sha256:aa", Some("sha256:bb"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("checksum mismatch: expected sha256:bb, got sha256:aa"),
            "{e}"
        );
        assert!(verify("u", "sha256:aa", Some("sha512:aa")).is_err());
    }
}
