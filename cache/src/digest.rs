//! One-shot hashing and a hashing writer giving [`Digest`]s.
//!
//! The digest type itself is kiln's one, `kiln_oci::Digest`, re-exported here so the
//! store's API reads `kiln_cache::Digest`.

use std::io::{self, Write};

pub use kiln_oci::Digest;
use kiln_oci::digest::Hashing;

/// The sha256 digest of `bytes` (kiln's one sha256, under the store's name).
pub use kiln_oci::digest::sha256_digest as sha256_of;

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
        self.0.finish()
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
