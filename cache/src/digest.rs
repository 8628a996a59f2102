//! `sha256:<hex>` digests, one-shot hashing and a hashing writer.

use std::fmt;
use std::io::{self, Write};
use std::str::FromStr;

use kiln_oci::digest::{Hashing, sha256_digest};
use serde::{Deserialize, Serialize};

use crate::error::{CacheError, Result};

const SHA256_PREFIX: &str = "sha256:";
const SHA256_HEX_LEN: usize = 64;

/// A validated OCI content digest of the form `sha256:<64 lowercase hex>`.
///
/// kiln only produces and stores sha256 digests; other algorithms are
/// rejected at parse time with a message saying so. Serializes as its string
/// form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parse and validate a digest string.
    pub fn parse(s: &str) -> Result<Self> {
        let invalid = |reason: String| CacheError::InvalidDigest {
            input: s.to_owned(),
            reason,
        };
        let Some((algo, hex)) = s.split_once(':') else {
            return Err(invalid(
                "expected the form sha256:<64 hex characters>".into(),
            ));
        };
        if algo != "sha256" {
            return Err(invalid(format!(
                "unsupported algorithm {algo:?} (kiln only supports sha256)"
            )));
        }
        if hex.len() != SHA256_HEX_LEN {
            return Err(invalid(format!(
                "sha256 hex part must be {SHA256_HEX_LEN} characters, got {}",
                hex.len()
            )));
        }
        if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(invalid(format!("{c:?} is not a hex digit")));
        }
        if hex.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(invalid("hex digits must be lowercase".into()));
        }
        Ok(Digest(s.to_owned()))
    }

    /// Build a digest from a raw 32-byte sha256 output.
    pub fn from_sha256_bytes(bytes: &[u8; 32]) -> Self {
        let mut s = String::with_capacity(SHA256_PREFIX.len() + SHA256_HEX_LEN);
        s.push_str(SHA256_PREFIX);
        push_hex(&mut s, bytes);
        Digest(s)
    }

    /// The algorithm part, always `"sha256"`.
    pub fn algorithm(&self) -> &str {
        &self.0[..SHA256_PREFIX.len() - 1]
    }

    /// The lowercase hex part (64 characters).
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    /// The full `sha256:<hex>` string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Append `bytes` to `out` as lowercase hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.0)
    }
}

impl FromStr for Digest {
    type Err = CacheError;
    fn from_str(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = CacheError;
    fn try_from(s: String) -> Result<Self> {
        Digest::parse(&s)
    }
}

impl TryFrom<&str> for Digest {
    type Error = CacheError;
    fn try_from(s: &str) -> Result<Self> {
        Digest::parse(s)
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl AsRef<str> for Digest {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

/// The sha256 digest of `bytes` (hashed by kiln's one sha256, in `kiln_oci::digest`).
pub fn sha256_of(bytes: &[u8]) -> Digest {
    Digest(sha256_digest(bytes))
}

/// A [`Write`] adapter that sha256-hashes and counts every byte written
/// through it to the inner writer.
///
/// Only bytes the inner writer accepted are hashed, so partial writes are
/// accounted for correctly. Use `std::io::sink()` as the inner writer to just
/// hash a stream (e.g. with `std::io::copy`). A [`Digest`]-typed face over
/// `kiln_oci::digest::Hashing`, kiln's one hashing writer.
#[derive(Debug)]
pub struct Sha256Writer<W: Write>(Hashing<W>);

impl<W: Write> Sha256Writer<W> {
    /// Wrap `inner`.
    pub fn new(inner: W) -> Self {
        Sha256Writer(Hashing::new(inner))
    }

    /// Number of bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.0.count()
    }

    /// The inner writer.
    pub fn get_ref(&self) -> &W {
        self.0.get_ref()
    }

    /// The inner writer, mutably. Bytes written directly to it are not hashed.
    pub fn get_mut(&mut self) -> &mut W {
        self.0.get_mut()
    }

    /// Finish hashing: returns the inner writer (not flushed), the digest
    /// and the byte count.
    pub fn finish(self) -> (W, Digest, u64) {
        let (inner, digest, count) = self.0.finish();
        (inner, Digest(digest), count)
    }
}

impl<W: Write> Write for Sha256Writer<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        self.0.write_all(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_of(b"").as_str(), EMPTY);
        assert_eq!(
            sha256_of(b"abc").hex(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn parse_and_accessors() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex().len(), 64);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(EMPTY.parse::<Digest>().unwrap(), d);
    }

    #[test]
    fn parse_errors_are_specific() {
        let msg = |s: &str| Digest::parse(s).unwrap_err().to_string();
        assert!(msg("nocolon").contains("expected the form"));
        assert!(msg("sha512:abcd").contains("unsupported algorithm \"sha512\""));
        assert!(msg("sha256:abcd").contains("must be 64 characters, got 4"));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(msg(&upper).contains("lowercase"));
        let bad = format!("sha256:{}g", &EMPTY[7..70]);
        assert!(
            msg(&bad).contains("'g' is not a hex digit"),
            "{}",
            msg(&bad)
        );
        assert!(msg("sha256:").contains(r#""sha256:""#));
    }

    #[test]
    fn serde_as_string() {
        let d = sha256_of(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let err = serde_json::from_str::<Digest>("\"sha256:zz\"").unwrap_err();
        assert!(err.to_string().contains("invalid digest"));
    }

    #[test]
    fn writer_hashes_and_counts() {
        let mut w = Sha256Writer::new(Vec::new());
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!(w.bytes_written(), 3);
        let (buf, d, n) = w.finish();
        assert_eq!(buf, b"abc");
        assert_eq!(n, 3);
        assert_eq!(d, sha256_of(b"abc"));
    }
}
