//! Issue 9, finding 5: a registry that stalls (before the headers, in the
//! middle of a blob, at its token service, or trickling a byte at a time)
//! must not hang a pull or a push. Each test runs a tiny HTTP server on
//! 127.0.0.1 that misbehaves in one way, with the client's timeout set to
//! one second, and checks that the call returns with an error naming the
//! reference, the registry and the stall.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kiln_cache::Store;
use kiln_registry::net::Timeouts;
use kiln_registry::{
    Client, ClientOptions, NoProgress, Platform, PushOptions, Reference, RegistryError,
};
use support::{image, layer, noise};

/// Longest a server thread keeps a connection open; every test must end
/// well before.
const HOLD: Duration = Duration::from_secs(40);

/// A request as the server saw it.
struct Request {
    method: String,
    path: String,
}

/// An HTTP server on 127.0.0.1 that answers each connection with `handler`.
struct Server {
    port: u16,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl Server {
    fn start(
        handler: impl Fn(&Request, &mut TcpStream, &dyn Fn() -> bool) + Send + Sync + 'static,
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let stop = Arc::new(AtomicBool::new(false));
        let handler = Arc::new(handler);
        let accept = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let started = Instant::now();
                while !stop.load(Ordering::Relaxed) && started.elapsed() < HOLD {
                    let Ok((mut conn, _)) = listener.accept() else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    conn.set_nonblocking(false).unwrap();
                    let handler = handler.clone();
                    let stop = stop.clone();
                    std::thread::spawn(move || {
                        let opened = Instant::now();
                        let go_on = || !stop.load(Ordering::Relaxed) && opened.elapsed() < HOLD;
                        // Keep-alive: several requests may come on one connection.
                        while go_on() {
                            let Some(req) = read_head(&conn) else { return };
                            handler(&req, &mut conn, &go_on);
                        }
                    });
                }
            })
        };
        Server {
            port,
            stop,
            accept: Some(accept),
        }
    }

    fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
    }
}

/// Reads a request's head (and drops any body it announces, up to 1 MiB).
fn read_head(conn: &TcpStream) -> Option<Request> {
    conn.set_read_timeout(Some(HOLD)).unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_owned();
    let path = parts.next()?.to_owned();
    let mut len = 0usize;
    for _ in 0..100 {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        if h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    if method != "PUT" && method != "PATCH" {
        let mut body = vec![0u8; len.min(1 << 20)];
        std::io::Read::read_exact(&mut r, &mut body).ok()?;
    }
    Some(Request { method, path })
}

/// Sleeps until the server stops (at most [`HOLD`]): a peer that never answers.
fn stall(go_on: &dyn Fn() -> bool) {
    while go_on() {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn respond(conn: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = conn.write_all(head.as_bytes());
    let _ = conn.write_all(body);
}

/// A manifest whose config is `size` bytes (the server never sends them all).
fn manifest(size: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{}", "ab".repeat(32)),
            "size": size,
        },
        "layers": [],
    }))
    .unwrap()
}

fn client() -> Client {
    Client::new(ClientOptions {
        retries: 1,
        retry_delay: Duration::from_millis(50),
        timeouts: Timeouts::new(Duration::from_secs(1)),
        ..Default::default()
    })
    .unwrap()
}

/// Pulls `app:1` from `server`; returns the error and how long it took.
fn pull(server: &Server) -> (RegistryError, Duration) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let r = Reference::parse(&format!("{}/stall/app:1", server.host())).unwrap();
    let p = Platform::parse("linux/amd64").unwrap();
    let start = Instant::now();
    let e = client()
        .pull(&r, &p, &store, &NoProgress)
        .expect_err("a stalled pull must fail");
    (e, start.elapsed())
}

/// The error is a stall of the pull of `app:1` on `server`, after both
/// attempts, saying `detail`; it came in time.
fn assert_stalled(server: &Server, e: &RegistryError, took: Duration, action: &str, detail: &str) {
    let msg = e.to_string();
    eprintln!("error shown to the user ({took:?}): {msg}");
    assert!(matches!(e, RegistryError::Stalled { .. }), "{msg}");
    let want = format!(
        "{action} {}/stall/app:1: registry {} stalled: ",
        server.host(),
        server.host()
    );
    assert!(msg.starts_with(&want), "{msg}\nwanted: {want}");
    assert!(msg.contains(detail), "{msg}\nwanted: {detail}");
    assert!(msg.contains("gave up after 2 attempt(s)"), "{msg}");
    assert!(!msg.contains('\n'), "{msg}");
    // Two attempts of about a second each, plus the backoff; far below HOLD.
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn issue9_registry_stalls_before_headers() {
    let server = Server::start(|_, _, go_on| stall(go_on));
    let (e, took) = pull(&server);
    assert_stalled(&server, &e, took, "pull", "no response for 1s");
}

#[test]
fn issue9_registry_trickles_its_headers() {
    let server = Server::start(|_, conn, go_on| {
        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\n");
        for _ in 0..60 {
            if !go_on() || conn.write_all(b"X").is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let (e, took) = pull(&server);
    assert_stalled(&server, &e, took, "pull", "no response for 1s");
}

#[test]
fn issue9_registry_stalls_mid_blob() {
    let server = Server::start(|req, conn, go_on| {
        if req.path.contains("/manifests/") {
            let m = manifest(100_000);
            let ct = (
                "Content-Type",
                "application/vnd.oci.image.manifest.v1+json".into(),
            );
            respond(conn, "200 OK", &[ct], &m);
        } else {
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            let _ = conn.write_all(&[b'x'; 1000]);
            stall(go_on);
        }
    });
    let (e, took) = pull(&server);
    assert_stalled(&server, &e, took, "pull", "no data for 1s");
}

#[test]
fn issue9_registry_trickles_a_blob() {
    let server = Server::start(|req, conn, go_on| {
        if req.path.contains("/manifests/") {
            let m = manifest(100_000);
            respond(conn, "200 OK", &[], &m);
        } else {
            // A byte every 300 ms: a per-read timeout of 1 s never fires.
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n");
            for _ in 0..60 {
                if !go_on() || conn.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        }
    });
    let (e, took) = pull(&server);
    assert_stalled(&server, &e, took, "pull", "less than 16384 bytes/s");
}

#[test]
fn issue9_token_service_stalls() {
    let server = Arc::new(std::sync::OnceLock::<u16>::new());
    let port = server.clone();
    let s = Server::start(move |req, conn, go_on| {
        if req.path.starts_with("/token") {
            stall(go_on);
        } else {
            let realm = format!("http://127.0.0.1:{}/token", port.get().unwrap());
            let challenge = format!(r#"Bearer realm="{realm}",service="stall""#);
            respond(
                conn,
                "401 Unauthorized",
                &[("WWW-Authenticate", challenge)],
                b"",
            );
        }
    });
    server.set(s.port).unwrap();
    let (e, took) = pull(&s);
    assert_stalled(&s, &e, took, "pull", "no response for 1s");
}

#[test]
fn issue9_registry_stalls_an_upload() {
    let server = Server::start(|req, conn, go_on| match req.method.as_str() {
        "HEAD" => respond(conn, "404 Not Found", &[], b""),
        "POST" => {
            let loc = ("Location", "/v2/stall/app/blobs/uploads/1".to_owned());
            respond(conn, "202 Accepted", &[loc], b"");
        }
        // Never reads the body, never answers.
        _ => stall(go_on),
    });
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("store")).unwrap();
    let img = image(&store, &[layer("big", &noise(9, 64 << 10))], "amd64", "up");
    let r = Reference::parse(&format!("{}/stall/app:1", server.host())).unwrap();
    let start = Instant::now();
    let e = client()
        .push(
            &store,
            &img.manifest,
            &r,
            &PushOptions::default(),
            &NoProgress,
        )
        .expect_err("a stalled push must fail");
    // The deadline of a ~64 KiB upload is 1 s + 64 KiB at 16 KiB/s: about 5 s.
    let took = start.elapsed();
    let msg = e.to_string();
    eprintln!("error shown to the user ({took:?}): {msg}");
    assert!(matches!(e, RegistryError::Stalled { .. }), "{msg}");
    assert!(msg.contains("request not done within"), "{msg}");
    assert!(
        msg.starts_with(&format!("push {}/stall/app:1: registry", server.host())),
        "{msg}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
}
