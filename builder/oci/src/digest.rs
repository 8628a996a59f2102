//! kiln's one sha256: [`sha256_digest`] for bytes in memory and [`Hashing`] for
//! streams, both giving OCI digests `sha256:<64 lowercase hex>`.
//!
//! The frontend (graph digests), the cache (`kiln_cache::Digest` and its writer),
//! the layer codec (diff_ids and blob digests) and the builder
//! (configs, manifests, exports, downloads) all hash through here, so a digest is
//! formatted one way only.

use std::io::{self, Read, Write};

use sha2::{Digest as _, Sha256};

/// `sha256:` followed by the lowercase hex of `hasher`'s result.
fn format(hasher: Sha256) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in hasher.finalize().iter() {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    out
}

/// The OCI digest `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    format(h)
}

/// A reader or writer that sha256-hashes and counts every byte passing through it.
///
/// Only the bytes the inner reader gave or the inner writer accepted are hashed, so
/// short reads and partial writes are accounted for. Wrap `std::io::sink()` to just
/// hash a stream.
pub struct Hashing<T> {
    inner: T,
    hasher: Sha256,
    count: u64,
}

impl<T> Hashing<T> {
    /// Wraps `inner`.
    pub fn new(inner: T) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            count: 0,
        }
    }

    /// Number of bytes hashed so far.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The wrapped value.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }

    /// The wrapped value, mutably. Bytes read or written through it directly are not
    /// hashed.
    pub fn get_mut(&mut self) -> &mut T {
        &mut self.inner
    }

    /// Finishes hashing: the wrapped value (not flushed), the digest `sha256:<hex>` of
    /// everything so far, and its length.
    pub fn finish(self) -> (T, String, u64) {
        (self.inner, format(self.hasher), self.count)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Hashing<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hashing")
            .field("inner", &self.inner)
            .field("count", &self.count)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_digest(b""), EMPTY);
        assert_eq!(sha256_digest(b"abc"), ABC);
    }

    #[test]
    fn writer_hashes_and_counts_what_was_accepted() {
        // A writer that takes one byte at a time: write_all loops, every byte is
        // hashed once.
        struct OneByte(Vec<u8>);
        impl Write for OneByte {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.extend_from_slice(&buf[..buf.len().min(1)]);
                Ok(buf.len().min(1))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Hashing::new(OneByte(Vec::new()));
        w.write_all(b"ab").unwrap();
        w.write_all(b"c").unwrap();
        assert_eq!(w.count(), 3);
        let (inner, digest, n) = w.finish();
        assert_eq!(
            (inner.0.as_slice(), digest.as_str(), n),
            (&b"abc"[..], ABC, 3)
        );
    }

    #[test]
    fn reader_hashes_and_counts() {
        let mut r = Hashing::new(&b"abc"[..]);
        let mut out = Vec::new();
        r.read_to_end(&mut out).unwrap();
        let (_, digest, n) = r.finish();
        assert_eq!((out.as_slice(), digest.as_str(), n), (&b"abc"[..], ABC, 3));
        assert_eq!(Hashing::new(io::empty()).finish().1, EMPTY);
    }
}
