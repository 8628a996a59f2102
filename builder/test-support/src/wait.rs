//! Waiting for an event instead of sleeping a fixed time: each wait polls its condition
//! and, when the deadline passes, panics saying what it waited for and what the server
//! it waited on logged, so a failure never falls through into a confusing later error.

use std::net::TcpStream;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant, SystemTime};

/// How often a wait polls its condition.
const POLL: Duration = Duration::from_millis(20);

/// Polls `ready` until it returns `Some`, for at most `timeout`; then panics with
/// `what` and `diagnostics()` (a server's log, say).
pub fn until<T>(
    timeout: Duration,
    what: &str,
    mut ready: impl FnMut() -> Option<T>,
    diagnostics: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = ready() {
            return v;
        }
        if Instant::now() >= deadline {
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}",
                diagnostics()
            );
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `child` accepts TCP connections on `127.0.0.1:port`. Panics with the
/// child's exit status if it dies first, or after `timeout`; both messages include
/// `log()` (what the server wrote to stderr).
pub fn for_port(
    child: &mut Child,
    port: u16,
    timeout: Duration,
    what: &str,
    log: impl Fn() -> String,
) {
    until(
        timeout,
        &format!("{what} to listen on 127.0.0.1:{port}"),
        || {
            if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(());
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{what} exited with {status} before listening on 127.0.0.1:{port}; its log:\n{}",
                    log()
                );
            }
            None
        },
        || format!("{what}'s log:\n{}", log()),
    );
}

/// Waits until `path`'s ctime is at least `age` in the past. The stat memo distrusts
/// files changed within its racy window (a ctime cannot be set back, unlike an mtime),
/// so a test that needs a file memoized waits for exactly that, usually not at all.
pub fn until_ctime_older(path: &Path, age: Duration) {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let ctime = SystemTime::UNIX_EPOCH
        + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32);
    let target = ctime + age;
    until(
        age + Duration::from_secs(5),
        &format!("{}'s ctime to be {age:?} old", path.display()),
        || (SystemTime::now() >= target).then_some(()),
        String::new,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn until_returns_the_value_once_ready() {
        let mut n = 0;
        let v = until(
            Duration::from_secs(5),
            "three polls",
            || {
                n += 1;
                (n == 3).then_some(n)
            },
            String::new,
        );
        assert_eq!(v, 3);
    }

    #[test]
    #[should_panic(expected = "waiting for nothing\nthe server said: boom")]
    fn until_fails_with_the_diagnostics() {
        until::<()>(
            Duration::from_millis(50),
            "nothing",
            || None,
            || "the server said: boom".into(),
        );
    }

    #[test]
    #[should_panic(expected = "exited with exit status: 3 before listening")]
    fn a_server_that_dies_fails_the_wait_with_its_log() {
        let mut child = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        for_port(&mut child, port, Duration::from_secs(10), "sh", || {
            "log line".into()
        });
    }

    #[test]
    fn ctime_wait_returns_once_the_file_is_old_enough() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, "x").unwrap();
        let start = Instant::now();
        until_ctime_older(&f, Duration::from_millis(60));
        assert!(start.elapsed() < Duration::from_secs(5));
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&f).unwrap();
        let ctime = SystemTime::UNIX_EPOCH + Duration::new(m.ctime() as u64, m.ctime_nsec() as u32);
        assert!(SystemTime::now().duration_since(ctime).unwrap() >= Duration::from_millis(60));
    }
}
