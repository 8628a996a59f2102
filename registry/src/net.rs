//! Network timeouts: how long a peer may make no progress before a request is
//! given up (and retried).
//!
//! The rule, for every request to a registry, its token service, or an
//! `ADD <url>` server:
//!
//! * connecting may take at most `connect`;
//! * the response headers must arrive within `stall` of the request being
//!   sent, and every read of the body must return data within `stall`
//!   (reqwest's blocking `timeout` is exactly that: it bounds the wait for
//!   the headers and each body read separately, not the whole transfer);
//! * a body must also keep moving at `min_rate` bytes per second on average
//!   over each window of `stall`: [`Watched`] counts the bytes, so a peer
//!   that trickles a byte every few seconds (which resets a per-read timer
//!   for ever) is cut off after one window;
//! * an upload (PUT/PATCH with a body) gets a total deadline of
//!   `stall + size / min_rate` ([`Timeouts::upload_deadline`]), and every
//!   socket has `TCP_USER_TIMEOUT = stall`, so data the peer stops
//!   acknowledging fails the request after `stall` too.
//!
//! Large layers are not limited by a total deadline on downloads: they only
//! have to keep moving.

use std::io::{self, Read};
use std::time::{Duration, Instant};

/// Default for [`Timeouts::stall`] and [`Timeouts::connect`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default for [`Timeouts::min_rate`]: 16 KiB/s (128 kbit/s).
pub const DEFAULT_MIN_RATE: u64 = 16 << 10;

/// The timeouts of every request (see the module doc for the rule).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// Longest wait for a TCP connection (and TLS handshake).
    pub connect: Duration,
    /// Longest time without a byte: until the response headers, between
    /// body reads, for unacknowledged sent data; also the window over which
    /// `min_rate` is averaged.
    pub stall: Duration,
    /// Slowest average transfer rate accepted over a window of `stall`, in
    /// bytes per second.
    pub min_rate: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_TIMEOUT,
            stall: DEFAULT_TIMEOUT,
            min_rate: DEFAULT_MIN_RATE,
        }
    }
}

impl Timeouts {
    /// Connect and stall timeouts of `timeout`, the default minimum rate
    /// (what `--network-timeout` sets).
    pub fn new(timeout: Duration) -> Timeouts {
        Timeouts {
            connect: timeout,
            stall: timeout,
            ..Timeouts::default()
        }
    }

    /// Applies the connect, header/read and TCP user timeouts to a client.
    pub fn apply(
        &self,
        builder: reqwest::blocking::ClientBuilder,
    ) -> reqwest::blocking::ClientBuilder {
        let b = builder.connect_timeout(self.connect).timeout(self.stall);
        #[cfg(any(target_os = "android", target_os = "fuchsia", target_os = "linux"))]
        let b = b.tcp_user_timeout(self.stall);
        b
    }

    /// Total time allowed for a request that uploads `len` bytes: a stall's
    /// worth, plus the body at the minimum rate.
    pub fn upload_deadline(&self, len: u64) -> Duration {
        self.stall + Duration::from_secs_f64(len as f64 / self.min_rate.max(1) as f64)
    }

    /// `body`, cut off with a [`Stalled`] error when it falls below the
    /// minimum rate, and with its read timeouts reported as [`Stalled`].
    pub fn watch<R: Read>(&self, body: R) -> Watched<R> {
        Watched {
            inner: body,
            timeouts: *self,
            window_start: Instant::now(),
            window_bytes: 0,
        }
    }

    /// If `e` (or an error it wraps) is a timeout of a request made with
    /// these timeouts, what stalled, in words (`no data for 30s`).
    pub fn stalled(&self, e: &(dyn std::error::Error + 'static)) -> Option<String> {
        causes(e).into_iter().find_map(|err| {
            if let Some(s) = err.downcast_ref::<Stalled>() {
                return Some(s.0.clone());
            }
            if let Some(r) = err.downcast_ref::<reqwest::Error>()
                && r.is_timeout()
            {
                return Some(if r.is_connect() {
                    format!("no connection within {:?}", self.connect)
                } else {
                    format!("no response for {:?}", self.stall)
                });
            }
            err.downcast_ref::<io::Error>()
                .filter(|io| io.kind() == io::ErrorKind::TimedOut)
                .map(|_| format!("no data for {:?}", self.stall))
        })
    }
}

/// `e` and the errors it wraps, in the order to look at them: its `source` chain, with
/// before each io::Error the errors that one wraps (io::Error's `source` skips the error
/// it wraps).
fn causes<'e>(
    e: &'e (dyn std::error::Error + 'static),
) -> Vec<&'e (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(inner) = err.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            out.extend(causes(inner));
        }
        out.push(err);
        cur = err.source();
    }
    out
}

/// If `e` (or an error it wraps) is a TLS handshake that another attempt cannot mend,
/// rustls' words for it: the peer's certificate is not trusted (unknown issuer, expired,
/// made for another name) or missing, the peer does not speak TLS on that port, or it
/// refused the handshake (its protocol, ciphers, or kiln's lack of a client
/// certificate). Such a request is not retried: another attempt would meet the same
/// refusal.
pub fn tls_refusal(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use rustls::AlertDescription as Alert;
    use rustls::Error as Tls;
    let t = causes(e)
        .into_iter()
        .find_map(|err| err.downcast_ref::<Tls>())?;
    matches!(
        t,
        Tls::InvalidCertificate(_)
            | Tls::NoCertificatesPresented
            | Tls::UnsupportedNameType
            | Tls::PeerIncompatible(_)
            | Tls::InvalidMessage(_)
            // The peer's refusals of the handshake itself; not, say, its
            // `internal_error`, which may pass.
            | Tls::AlertReceived(
                Alert::HandshakeFailure
                    | Alert::NoCertificate
                    | Alert::BadCertificate
                    | Alert::UnsupportedCertificate
                    | Alert::CertificateRevoked
                    | Alert::CertificateExpired
                    | Alert::CertificateUnknown
                    | Alert::UnknownCA
                    | Alert::AccessDenied
                    | Alert::ProtocolVersion
                    | Alert::InsufficientSecurity
                    | Alert::UnrecognisedName
                    | Alert::CertificateRequired
            )
    )
    .then(|| {
        if crate::tls::ca_used_as_end_entity(t) {
            // rustls says `Other(OtherError(CaUsedAsEndEntity))`.
            "its certificate is marked as a CA (a self-signed certificate?) and is \
             not one kiln trusts"
                .to_owned()
        } else {
            t.to_string()
        }
    })
}

/// A transfer that stopped making progress; the message says how
/// (`no data for 30s`).
#[derive(Debug)]
pub struct Stalled(pub String);

impl std::fmt::Display for Stalled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Stalled {}

/// A response body under the minimum-rate rule (see [`Timeouts::watch`]).
pub struct Watched<R> {
    inner: R,
    timeouts: Timeouts,
    window_start: Instant,
    window_bytes: u64,
}

impl<R: Read> Read for Watched<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let stall = self.timeouts.stall;
        let n = match self.inner.read(buf) {
            Ok(n) => n,
            Err(e) => {
                return Err(match self.timeouts.stalled(&e) {
                    Some(_) => stalled(format!("no data for {stall:?}")),
                    None => e,
                });
            }
        };
        if n == 0 || buf.is_empty() {
            return Ok(n);
        }
        self.window_bytes += n as u64;
        let elapsed = self.window_start.elapsed();
        if elapsed >= stall {
            let wanted = (self.timeouts.min_rate as f64 * stall.as_secs_f64()) as u64;
            if self.window_bytes < wanted {
                return Err(stalled(format!(
                    "only {} bytes in {elapsed:.1?} (less than {} bytes/s)",
                    self.window_bytes, self.timeouts.min_rate
                )));
            }
            self.window_start = Instant::now();
            self.window_bytes = 0;
        }
        Ok(n)
    }
}

fn stalled(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, Stalled(msg))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Which TLS failures are final: found through an io::Error, as reqwest wraps them;
    /// a peer's refusal of the handshake is, its internal error is not.
    #[test]
    fn tls_refusals_are_the_failures_another_attempt_cannot_mend() {
        use rustls::{AlertDescription as Alert, CertificateError, Error as Tls};
        let wrapped = |t: Tls| io::Error::new(io::ErrorKind::InvalidData, t);
        let refused = |t: Tls| tls_refusal(&wrapped(t));
        assert!(refused(Tls::InvalidCertificate(CertificateError::UnknownIssuer)).is_some());
        assert!(refused(Tls::AlertReceived(Alert::HandshakeFailure)).is_some());
        assert!(refused(Tls::AlertReceived(Alert::CertificateRequired)).is_some());
        assert!(refused(Tls::AlertReceived(Alert::InternalError)).is_none());
        assert!(refused(Tls::DecryptError).is_none());
        assert!(tls_refusal(&io::Error::from(io::ErrorKind::UnexpectedEof)).is_none());
    }

    /// Yields one byte per read, sleeping `gap` before each.
    struct Trickle {
        gap: Duration,
        left: usize,
    }

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.left == 0 || buf.is_empty() {
                return Ok(0);
            }
            std::thread::sleep(self.gap);
            self.left -= 1;
            buf[0] = b'x';
            Ok(1)
        }
    }

    fn quick() -> Timeouts {
        Timeouts {
            stall: Duration::from_millis(200),
            ..Timeouts::new(Duration::from_millis(200))
        }
    }

    #[test]
    fn a_trickle_is_cut_off_after_one_window() {
        let start = Instant::now();
        let mut body = quick().watch(Trickle {
            gap: Duration::from_millis(30),
            left: 1000,
        });
        let e = io::copy(&mut body, &mut io::sink()).unwrap_err();
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        let msg = quick().stalled(&e).expect("a stall");
        assert!(msg.starts_with("only ") && msg.contains("bytes/s"), "{msg}");
    }

    #[test]
    fn a_fast_body_passes_and_rates_reset_per_window() {
        let t = Timeouts {
            min_rate: 10,
            ..quick()
        };
        // 10 bytes/s over a 200 ms window is 2 bytes: one byte per 30 ms is plenty.
        let mut body = t.watch(Trickle {
            gap: Duration::from_millis(30),
            left: 20,
        });
        assert_eq!(io::copy(&mut body, &mut io::sink()).unwrap(), 20);
    }

    #[test]
    fn timeouts_are_named() {
        let t = quick();
        let e = io::Error::new(io::ErrorKind::TimedOut, "read timed out");
        assert_eq!(t.stalled(&e).as_deref(), Some("no data for 200ms"));
        let e = io::Error::other("connection reset");
        assert_eq!(t.stalled(&e), None);
        assert_eq!(
            Timeouts::new(Duration::from_secs(1)).upload_deadline(16 << 10),
            Duration::from_secs(2)
        );
    }
}
