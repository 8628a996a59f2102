//! kiln's one digest type and its one sha256.
//!
//! [`Digest`] is a validated `sha256:<64 lowercase hex>`: the store keys blobs by it,
//! the builder's layers, configs, manifests and ChainIDs are typed by it, and it
//! converts to and from `oci_spec::image::Digest` where oci-spec's descriptors are
//! built or read. [`sha256_digest`] hashes bytes in memory and [`Hashing`] streams;
//! both format a digest one way only. [`chain_id`] is the OCI ChainID of a layer stack,
//! computed here only.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256};

const SHA256_PREFIX: &str = "sha256:";
const SHA256_HEX_LEN: usize = 64;

/// A string that is not a `sha256:<64 lowercase hex>` digest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid digest {input:?}: {reason}")]
pub struct DigestError {
    /// The rejected input.
    pub input: String,
    /// Why it was rejected.
    pub reason: String,
}

/// A validated OCI content digest of the form `sha256:<64 lowercase hex>`.
///
/// kiln only produces and stores sha256 digests; other algorithms are rejected at
/// parse time with a message saying so (oci-spec's own `Digest` accepts any
/// registered algorithm, which is why the store and the builder use this one).
/// Serializes as its string form.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    /// Parses and validates a digest string.
    pub fn parse(s: &str) -> Result<Self, DigestError> {
        let invalid = |reason: String| DigestError {
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

    /// A digest from a raw 32-byte sha256 output.
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

/// Appends `bytes` to `out` as lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0xf)]));
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
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, DigestError> {
        Digest::parse(s)
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, DigestError> {
        Digest::parse(&s)
    }
}

impl TryFrom<&str> for Digest {
    type Error = DigestError;
    fn try_from(s: &str) -> Result<Self, DigestError> {
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

impl PartialEq<str> for Digest {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Digest {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// For building oci-spec descriptors. A kiln digest is always a valid oci-spec one.
impl From<&Digest> for oci_spec::image::Digest {
    fn from(d: &Digest) -> Self {
        oci_spec::image::Digest::from_str(d.as_str())
            .expect("a sha256:<64 lowercase hex> digest is a valid oci-spec digest")
    }
}

/// For building oci-spec descriptors.
impl From<Digest> for oci_spec::image::Digest {
    fn from(d: Digest) -> Self {
        oci_spec::image::Digest::from(&d)
    }
}

/// For reading oci-spec descriptors: refuses algorithms other than sha256.
impl TryFrom<&oci_spec::image::Digest> for Digest {
    type Error = DigestError;
    fn try_from(d: &oci_spec::image::Digest) -> Result<Self, DigestError> {
        Digest::parse(d.as_ref())
    }
}

/// For reading oci-spec descriptors: refuses algorithms other than sha256.
impl TryFrom<oci_spec::image::Digest> for Digest {
    type Error = DigestError;
    fn try_from(d: oci_spec::image::Digest) -> Result<Self, DigestError> {
        Digest::parse(d.as_ref())
    }
}

/// The OCI ChainID of a stack of layers given by their diff_ids, bottom first: the
/// first diff_id, then `sha256(parent + " " + diff_id)` for each layer above (OCI
/// image-spec, config.md, "Layer ChainID"). An empty stack has the digest of no bytes.
pub fn chain_id(diff_ids: &[Digest]) -> Digest {
    let Some((first, rest)) = diff_ids.split_first() else {
        return sha256_digest(b"");
    };
    rest.iter().fold(first.clone(), |chain, d| {
        sha256_digest(format!("{chain} {d}").as_bytes())
    })
}

/// `sha256:` followed by the lowercase hex of `hasher`'s result.
fn format(hasher: Sha256) -> String {
    let mut out = String::with_capacity(SHA256_PREFIX.len() + SHA256_HEX_LEN);
    out.push_str(SHA256_PREFIX);
    push_hex(&mut out, &hasher.finalize());
    out
}

/// The digest `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> Digest {
    let mut h = Sha256::new();
    h.update(bytes);
    Digest(format(h))
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

    /// Counts `n` bytes written to or read from the wrapped value directly (through
    /// [`Hashing::get_mut`]), which are not hashed.
    pub fn add_count(&mut self, n: u64) {
        self.count += n;
    }

    /// Hashes and counts `bytes` that do not pass through the wrapped value (a writer
    /// that stores them some other way).
    pub fn update(&mut self, bytes: &[u8]) {
        self.hasher.update(bytes);
        self.count += bytes.len() as u64;
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

    /// The state of the hash after the bytes so far (a few dozen bytes), from which
    /// [`Hashing::restore`] resumes: hashing a stream's head once and its tail
    /// later gives the digest of the whole stream.
    pub fn state(&self) -> Vec<u8> {
        self.hasher.serialize().to_vec()
    }

    /// Replaces the hash state and count by ones [`Hashing::state`] and
    /// [`Hashing::count`] gave after some bytes: the bytes hashed from now on
    /// follow those. `false` (and nothing changed) if `state` is not such a state.
    pub fn restore(&mut self, state: &[u8], count: u64) -> bool {
        let Ok(serialized) = SerializedState::<Sha256>::try_from(state) else {
            return false;
        };
        match Sha256::deserialize(&serialized) {
            Ok(hasher) => {
                self.hasher = hasher;
                self.count = count;
                true
            }
            Err(_) => false,
        }
    }

    /// Finishes hashing: the wrapped value (not flushed), the digest of
    /// everything so far, and its length.
    pub fn finish(self) -> (T, Digest, u64) {
        (self.inner, Digest(format(self.hasher)), self.count)
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

    #[test]
    fn a_restored_state_hashes_on_where_it_was_saved() {
        let mut head = Hashing::new(io::sink());
        head.write_all(&[7u8; 1000]).unwrap();
        let (state, count) = (head.state(), head.count());
        let mut tail = Hashing::new(io::sink());
        assert!(tail.restore(&state, count));
        tail.write_all(b"and the rest").unwrap();
        let (_, digest, len) = tail.finish();
        let mut whole = [7u8; 1000].to_vec();
        whole.extend_from_slice(b"and the rest");
        assert_eq!(digest, sha256_digest(&whole));
        assert_eq!(len, 1012);
        let mut other = Hashing::new(io::sink());
        assert!(!other.restore(b"not a state", 5));
        assert_eq!(other.count(), 0);
    }

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vectors() {
        assert_eq!(sha256_digest(b""), EMPTY);
        assert_eq!(sha256_digest(b"abc"), ABC);
        assert_eq!(
            Digest::from_sha256_bytes(&[0xab; 32]).hex(),
            "ab".repeat(32)
        );
    }

    #[test]
    fn parse_display_round_trip() {
        let d = Digest::parse(EMPTY).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex(), &EMPTY[7..]);
        assert_eq!(d.to_string(), EMPTY);
        assert_eq!(d.to_string().parse::<Digest>().unwrap(), d);
        assert_eq!(Digest::try_from(String::from(d.clone())).unwrap(), d);
        assert_eq!(d, EMPTY);
    }

    #[test]
    fn refusals_name_the_input_and_the_reason() {
        let msg = |s: &str| Digest::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("nocolon"),
            r#"invalid digest "nocolon": expected the form sha256:<64 hex characters>"#
        );
        assert!(
            msg("sha512:abcd")
                .contains("unsupported algorithm \"sha512\" (kiln only supports sha256)")
        );
        assert!(msg("sha256:abcd").contains("must be 64 characters, got 4"));
        let upper = EMPTY.to_uppercase().replace("SHA256", "sha256");
        assert!(msg(&upper).contains("hex digits must be lowercase"));
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
        let d = sha256_digest(b"x");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{d}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let err = serde_json::from_str::<Digest>("\"sha256:zz\"").unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
    }

    #[test]
    fn converts_to_oci_spec_and_back() {
        let d = Digest::parse(ABC).unwrap();
        let spec = oci_spec::image::Digest::from(&d);
        assert_eq!(spec.to_string(), ABC);
        assert_eq!(Digest::try_from(&spec).unwrap(), d);
        assert_eq!(
            Digest::try_from(oci_spec::image::Digest::from(d.clone())).unwrap(),
            d
        );
        // oci-spec accepts sha512; kiln refuses it when reading a descriptor.
        let sha512 = format!("sha512:{}", "a".repeat(128));
        let spec = oci_spec::image::Digest::from_str(&sha512).unwrap();
        let err = Digest::try_from(spec).unwrap_err();
        assert!(
            err.to_string().contains("kiln only supports sha256"),
            "{err}"
        );
    }

    /// The image-spec's definition (config.md, "Layer ChainID"): ChainID(A) = DiffID(A),
    /// ChainID(A|B) = Digest(ChainID(A) + " " + DiffID(B)), and so on; the expected
    /// values were computed with `printf '%s %s' A B | sha256sum`.
    #[test]
    fn chain_id_follows_the_image_spec() {
        let a = Digest::parse(EMPTY).unwrap();
        let b = Digest::parse(ABC).unwrap();
        let ab = "sha256:a893da35bd22286079f2f3931516d3423eb9b4945f2379e0f8a501ec3d665dd6";
        let aba = "sha256:c7aee1adee42d4db4910137e5f81f051269d58787a1f676ee50078fd0c689280";
        assert_eq!(chain_id(std::slice::from_ref(&a)), a);
        assert_eq!(chain_id(&[a.clone(), b.clone()]), ab);
        assert_eq!(chain_id(&[a.clone(), b.clone(), a.clone()]), aba);
        // Order matters.
        assert_ne!(chain_id(&[b, a.clone()]), ab);
        assert_eq!(chain_id(&[]), EMPTY);
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
