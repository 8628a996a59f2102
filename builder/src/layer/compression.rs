//! Layer compression: the [`Compression`] choice, media types, and the
//! streaming encoders/decoders behind them.

use std::io::{self, BufReader, Read, Write};

use flate2::GzBuilder;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

use super::error::LayerError;

/// Media type of an uncompressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// Media type of a gzip-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// Media type of a zstd-compressed OCI layer.
pub const MEDIA_TYPE_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// gzip (deflate) at `level` 0–9. The default, at level 6.
    Gzip {
        /// Compression level, 0 (store) to 9 (best).
        level: u32,
    },
    /// zstd at `level` (1–22; negative levels are the fast modes).
    Zstd {
        /// Compression level.
        level: i32,
    },
    /// A plain tar.
    Uncompressed,
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Gzip {
            level: Self::DEFAULT_GZIP_LEVEL,
        }
    }
}

impl Compression {
    /// gzip level used when none is given.
    pub const DEFAULT_GZIP_LEVEL: u32 = 6;
    /// zstd level used when none is given.
    pub const DEFAULT_ZSTD_LEVEL: i32 = 3;

    /// Parses a compression name (`gzip`, `zstd` or `uncompressed`, as in
    /// BuildKit's `compression=` exporter option) and an optional level.
    /// A level given with `uncompressed` is ignored, as BuildKit does.
    pub fn parse(name: &str, level: Option<i32>) -> Result<Self, LayerError> {
        match name {
            "gzip" => {
                let level = match level {
                    None => Self::DEFAULT_GZIP_LEVEL,
                    Some(l) => u32::try_from(l).ok().filter(|l| *l <= 9).ok_or_else(|| {
                        LayerError::InvalidCompression {
                            value: l.to_string(),
                            reason: "gzip levels are 0 to 9".into(),
                        }
                    })?,
                };
                Ok(Compression::Gzip { level })
            }
            "zstd" => {
                let level = level.unwrap_or(Self::DEFAULT_ZSTD_LEVEL);
                let range = zstd::compression_level_range();
                if !range.contains(&level) {
                    return Err(LayerError::InvalidCompression {
                        value: level.to_string(),
                        reason: format!("zstd levels are {} to {}", range.start(), range.end()),
                    });
                }
                Ok(Compression::Zstd { level })
            }
            "uncompressed" => Ok(Compression::Uncompressed),
            other => Err(LayerError::InvalidCompression {
                value: other.to_owned(),
                reason: "expected gzip, zstd or uncompressed".into(),
            }),
        }
    }

    /// The compression's name as accepted by [`Compression::parse`].
    pub fn name(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => "gzip",
            Compression::Zstd { .. } => "zstd",
            Compression::Uncompressed => "uncompressed",
        }
    }

    /// The OCI media type of a layer compressed this way.
    pub fn media_type(&self) -> &'static str {
        match self {
            Compression::Gzip { .. } => MEDIA_TYPE_LAYER_TAR_GZIP,
            Compression::Zstd { .. } => MEDIA_TYPE_LAYER_TAR_ZSTD,
            Compression::Uncompressed => MEDIA_TYPE_LAYER_TAR,
        }
    }
}

/// Number of zstd worker threads. zstd's multi-threaded output is the same
/// for any worker count >= 1 (but differs from single-threaded mode, so never
/// use 0): the count only changes speed, never the bytes.
fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8) as u32
}

/// A streaming compressor for one of the [`Compression`] kinds.
pub(super) enum Encoder<W: Write> {
    Gzip(GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

impl<W: Write> Encoder<W> {
    /// A compressor writing to `out`, using the default zstd worker count.
    pub(super) fn new(compression: Compression, out: W) -> io::Result<Self> {
        Self::with_workers(compression, out, zstd_workers())
    }

    /// A compressor writing to `out` with `workers` zstd threads (>= 1).
    pub(super) fn with_workers(compression: Compression, out: W, workers: u32) -> io::Result<Self> {
        Ok(match compression {
            // No file name, no mtime, OS byte 255 ("unknown", as Go writes):
            // the header carries nothing machine- or time-dependent.
            Compression::Gzip { level } => Encoder::Gzip(
                GzBuilder::new()
                    .operating_system(255)
                    .write(out, flate2::Compression::new(level.min(9))),
            ),
            Compression::Zstd { level } => {
                let mut enc = zstd::stream::write::Encoder::new(out, level)?;
                enc.include_checksum(true)?;
                enc.multithread(workers.max(1))?;
                Encoder::Zstd(enc)
            }
            Compression::Uncompressed => Encoder::Plain(out),
        })
    }

    /// Flushes the compressor's trailer and returns the inner writer.
    pub(super) fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Gzip(e) => e.finish(),
            Encoder::Zstd(e) => e.finish(),
            Encoder::Plain(w) => Ok(w),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Gzip(e) => e.write(buf),
            Encoder::Zstd(e) => e.write(buf),
            Encoder::Plain(w) => w.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Gzip(e) => e.flush(),
            Encoder::Zstd(e) => e.flush(),
            Encoder::Plain(w) => w.flush(),
        }
    }
}

/// A streaming decompressor chosen from the stream's magic bytes.
pub(super) enum Decoder<R: Read> {
    Gzip(Box<MultiGzDecoder<R>>),
    Zstd(zstd::stream::read::Decoder<'static, BufReader<R>>),
    Plain(R),
}

/// gzip's magic bytes.
const GZIP_MAGIC: &[u8] = &[0x1f, 0x8b];
/// zstd's frame magic bytes (little-endian 0xFD2FB528).
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Reads up to 4 bytes from `blob` and returns a decoder for the whole
/// stream (those bytes included), picked by magic number: gzip, zstd, or
/// otherwise a plain tar.
pub(super) fn detect(mut blob: impl Read) -> io::Result<(Compression, Decoder<impl Read>)> {
    let mut magic = [0u8; 4];
    let mut n = 0;
    while n < magic.len() {
        match blob.read(&mut magic[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &magic[..n];
    let stream = io::Cursor::new(head.to_vec()).chain(blob);
    Ok(if head.starts_with(GZIP_MAGIC) {
        (
            Compression::default(),
            Decoder::Gzip(Box::new(MultiGzDecoder::new(stream))),
        )
    } else if head.starts_with(ZSTD_MAGIC) {
        (
            Compression::Zstd {
                level: Compression::DEFAULT_ZSTD_LEVEL,
            },
            Decoder::Zstd(zstd::stream::read::Decoder::new(stream)?),
        )
    } else {
        (Compression::Uncompressed, Decoder::Plain(stream))
    })
}

impl<R: Read> Read for Decoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Decoder::Gzip(d) => d.read(buf),
            Decoder::Zstd(d) => d.read(buf),
            Decoder::Plain(r) => r.read(buf),
        }
    }
}
