//! Layer compression: the [`Compression`] choice, media types, a chunk's gzip member
//! ([`gzip_member`]) and the streaming decoders.

#[cfg(test)]
use std::io::Write;
use std::io::{self, BufReader, Read};

use flate2::read::MultiGzDecoder;

use super::error::LayerError;

pub use kiln_oci::media_types::{
    OCI_LAYER_GZIP as MEDIA_TYPE_LAYER_TAR_GZIP, OCI_LAYER_TAR as MEDIA_TYPE_LAYER_TAR,
    OCI_LAYER_ZSTD as MEDIA_TYPE_LAYER_TAR_ZSTD,
};

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
#[cfg(test)]
fn zstd_workers() -> u32 {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8) as u32
}

/// Uncompressed bytes per block of the parallel gzip encoder. Fixed: the output
/// depends on it, never on the number of threads.
const PAR_BLOCK: usize = 1 << 20;
/// Blocks compressed at once.
#[cfg(test)]
const PAR_BATCH: usize = 8;
/// deflate's window: each block is primed with this much of the input before it.
const DEFLATE_WINDOW: usize = 32 << 10;

/// A gzip encoder that compresses 1 MiB blocks on the rayon pool, as pigz does: each
/// block is a raw deflate stream primed with the previous 32 KiB of input and ended
/// with a sync flush, so the blocks concatenate into one ordinary gzip member. The
/// bytes depend only on the input and the level. The layer writer compresses whole
/// chunks with [`gzip_member`]; this streaming form is what its bytes are tested
/// against.
#[cfg(test)]
pub(super) struct ParGzEncoder<W: Write> {
    out: W,
    level: u32,
    cur: Vec<u8>,
    pending: Vec<Vec<u8>>,
    /// The last [`DEFLATE_WINDOW`] bytes of input before `pending`.
    dict: Vec<u8>,
    crc: crc32fast::Hasher,
    size: u64,
}

/// Bytes of each probe [`incompressible`] takes.
const PROBE: usize = 16 << 10;

/// Whether a block looks like random or already-compressed data: four samples spread
/// over it all shrink by less than 2% at level 1. Such blocks are stored rather than
/// searched for matches, which at any level costs as much as compressing text and gains
/// nothing. Decided from the block's bytes alone, so the output stays deterministic.
fn incompressible(input: &[u8]) -> bool {
    use flate2::{Compress, FlushCompress};
    if input.len() < 4 * PROBE {
        return false;
    }
    (0..4).all(|i| {
        let start = i * (input.len() - PROBE) / 3;
        let sample = &input[start..start + PROBE];
        let mut c = Compress::new(flate2::Compression::new(1), false);
        let mut out = Vec::with_capacity(PROBE + 1024);
        match c.compress_vec(sample, &mut out, FlushCompress::Finish) {
            Ok(_) => c.total_in() as usize == PROBE && out.len() * 100 >= PROBE * 98,
            Err(_) => false,
        }
    })
}

/// One block as raw deflate, primed with `dict`, ended with a sync flush (or, `last`,
/// the stream's end). A new compressor each time: one reset for reuse may give other
/// bytes for the same input (zlib-rs#459, zlib-ng#2100: a reset leaves the window's
/// bytes, which the match finder may read past the input), and a layer written again
/// from its snapshot must come out the same.
fn deflate_block(level: u32, dict: &[u8], input: &[u8], last: bool) -> io::Result<Vec<u8>> {
    use flate2::{Compress, FlushCompress, Status};
    let level = if level > 0 && incompressible(input) {
        0
    } else {
        level.min(9)
    };
    let mut c = Compress::new(flate2::Compression::new(level), false);
    if !dict.is_empty() {
        c.set_dictionary(dict).map_err(io::Error::other)?;
    }
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let mut out = Vec::with_capacity(input.len() / 2 + 1024);
    loop {
        if out.capacity() - out.len() < 16 << 10 {
            out.reserve(input.len() / 4 + (64 << 10));
        }
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let all_in = c.total_in() as usize == input.len();
        match status {
            Status::StreamEnd => break,
            _ if all_in && !last && out.len() < out.capacity() => break,
            _ => {}
        }
    }
    Ok(out)
}

/// ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255 (unknown), as Go writes it.
const GZIP_HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// `data` as one gzip member: the same bytes as [`ParGzEncoder`] writes for it, its
/// blocks compressed in parallel straight from `data` rather than copied into
/// blocks first (a chunk of a layer is in memory whole).
pub(super) fn gzip_member(level: u32, data: &[u8]) -> io::Result<Vec<u8>> {
    use rayon::prelude::*;
    // The encoder's blocks: every PAR_BLOCK bytes, then the rest, which is empty when
    // the input ends a block (that empty block ends the stream). Each is primed with
    // the 32 KiB of input before it.
    let n = data.len() / PAR_BLOCK + 1;
    let blocks = (0..n)
        .into_par_iter()
        .map(|i| {
            let start = i * PAR_BLOCK;
            let end = (start + PAR_BLOCK).min(data.len());
            let dict = &data[start.saturating_sub(DEFLATE_WINDOW)..start];
            deflate_block(level, dict, &data[start..end], i + 1 == n)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let len = blocks.iter().map(Vec::len).sum::<usize>() + GZIP_HEADER.len() + 8;
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&GZIP_HEADER);
    for b in &blocks {
        out.extend_from_slice(b);
    }
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    Ok(out)
}

#[cfg(test)]
impl<W: Write> ParGzEncoder<W> {
    pub(super) fn new(out: W, level: u32) -> Self {
        ParGzEncoder {
            out,
            level,
            cur: Vec::with_capacity(PAR_BLOCK),
            pending: Vec::new(),
            dict: Vec::new(),
            crc: crc32fast::Hasher::new(),
            size: 0,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        self.out.write_all(&GZIP_HEADER)
    }

    /// Compresses the pending blocks (and, when `last`, the final one) in parallel.
    fn compress_pending(&mut self, last: bool) -> io::Result<()> {
        use rayon::prelude::*;
        let mut blocks = std::mem::take(&mut self.pending);
        if last {
            blocks.push(std::mem::take(&mut self.cur));
        }
        let n = blocks.len();
        let dicts: Vec<&[u8]> = (0..n)
            .map(|i| {
                let prev: &[u8] = if i == 0 { &self.dict } else { &blocks[i - 1] };
                &prev[prev.len().saturating_sub(DEFLATE_WINDOW)..]
            })
            .collect();
        let level = self.level;
        let compressed: Vec<io::Result<Vec<u8>>> = blocks
            .par_iter()
            .enumerate()
            .map(|(i, b)| deflate_block(level, dicts[i], b, last && i + 1 == n))
            .collect();
        for c in compressed {
            self.out.write_all(&c?)?;
        }
        if let Some(b) = blocks.last() {
            let mut d = std::mem::take(&mut self.dict);
            d.extend_from_slice(&b[b.len().saturating_sub(DEFLATE_WINDOW)..]);
            let keep = d.len().saturating_sub(DEFLATE_WINDOW);
            self.dict = d.split_off(keep);
        }
        Ok(())
    }

    pub(super) fn finish(mut self) -> io::Result<W> {
        if self.size == 0 {
            self.header()?;
        }
        self.compress_pending(true)?;
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.size as u32).to_le_bytes())?;
        Ok(self.out)
    }
}

#[cfg(test)]
impl<W: Write> Write for ParGzEncoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.size == 0 && !buf.is_empty() {
            self.header()?;
        }
        let n = buf.len().min(PAR_BLOCK - self.cur.len());
        self.cur.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.size += n as u64;
        if self.cur.len() == PAR_BLOCK {
            let full = std::mem::replace(&mut self.cur, Vec::with_capacity(PAR_BLOCK));
            self.pending.push(full);
            if self.pending.len() == PAR_BATCH {
                self.compress_pending(false)?;
            }
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

/// A streaming compressor for one of the [`Compression`] kinds: what a chunked layer
/// of one chunk is tested to equal.
#[cfg(test)]
pub(super) enum Encoder<W: Write> {
    Gzip(Box<ParGzEncoder<W>>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    Plain(W),
}

#[cfg(test)]
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
            Compression::Gzip { level } => Encoder::Gzip(Box::new(ParGzEncoder::new(out, level))),
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

#[cfg(test)]
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
    let compression = Compression::sniff(head);
    let stream = io::Cursor::new(head.to_vec()).chain(blob);
    let decoder = match compression {
        Compression::Gzip { .. } => Decoder::Gzip(Box::new(MultiGzDecoder::new(stream))),
        Compression::Zstd { .. } => Decoder::Zstd(zstd::stream::read::Decoder::new(stream)?),
        Compression::Uncompressed => Decoder::Plain(stream),
    };
    Ok((compression, decoder))
}

impl Compression {
    /// The compression of a blob whose first bytes are `head`, by magic number:
    /// gzip, zstd, or otherwise a plain tar. A stream does not record its level, so
    /// the level is the default one.
    pub fn sniff(head: &[u8]) -> Self {
        if head.starts_with(GZIP_MAGIC) {
            Compression::default()
        } else if head.starts_with(ZSTD_MAGIC) {
            Compression::Zstd {
                level: Compression::DEFAULT_ZSTD_LEVEL,
            }
        } else {
            Compression::Uncompressed
        }
    }
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

#[cfg(test)]
mod sniff_tests {
    use super::*;

    #[test]
    fn sniff_reads_magic_numbers() {
        assert_eq!(
            Compression::sniff(&[0x1f, 0x8b, 8, 0]),
            Compression::Gzip { level: 6 }
        );
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]),
            Compression::Zstd { level: 3 }
        );
        // A zstd magic cut short, an empty blob and a tar are all plain.
        assert_eq!(Compression::sniff(&[0x28, 0xb5]), Compression::Uncompressed);
        assert_eq!(Compression::sniff(&[]), Compression::Uncompressed);
        assert_eq!(Compression::sniff(b"etc/\0\0\0"), Compression::Uncompressed);
    }
}

#[cfg(test)]
mod par_gz_tests {
    use super::*;

    fn roundtrip(data: &[u8], level: u32) -> Vec<u8> {
        let mut enc = ParGzEncoder::new(Vec::new(), level);
        // Odd write sizes cross block boundaries.
        for chunk in data.chunks(77_777) {
            enc.write_all(chunk).unwrap();
        }
        let gz = enc.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data, "len {}", data.len());
        gz
    }

    #[test]
    fn parallel_gzip_is_valid_gzip_for_every_size() {
        let mut data = Vec::new();
        let mut x: u32 = 1;
        for i in 0..(PAR_BLOCK * (PAR_BATCH + 3) + 12345) {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Half compressible text, half noise.
            data.push(if (i / 4096) % 2 == 0 {
                b"kiln "[i % 5]
            } else {
                (x >> 16) as u8
            });
        }
        for len in [
            0,
            1,
            100,
            PAR_BLOCK - 1,
            PAR_BLOCK,
            PAR_BLOCK + 1,
            3 * PAR_BLOCK + 7,
            data.len(),
        ] {
            roundtrip(&data[..len], 6);
        }
        roundtrip(&data[..PAR_BLOCK * 2], 0);
        // A chunk compressed whole is the encoder's bytes, at every block boundary.
        for len in [
            0,
            1,
            PAR_BLOCK,
            PAR_BLOCK + 1,
            PAR_BLOCK * PAR_BATCH,
            PAR_BLOCK * PAR_BATCH + 1,
            data.len(),
        ] {
            for level in [0, 1, 6, 9] {
                let mut enc = ParGzEncoder::new(Vec::new(), level);
                enc.write_all(&data[..len]).unwrap();
                let streamed = enc.finish().unwrap();
                let whole = gzip_member(level, &data[..len]).unwrap();
                assert!(whole == streamed, "len {len} level {level}");
            }
        }
        roundtrip(&data[..PAR_BLOCK * 2], 9);
        // Deterministic, and primed blocks compress as well as a single stream nearly.
        let a = roundtrip(&data, 6);
        assert_eq!(a, roundtrip(&data, 6));
        let mut single = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        single.write_all(&data).unwrap();
        let single = single.finish().unwrap();
        assert!(
            a.len() < single.len() + single.len() / 50,
            "{} vs {}",
            a.len(),
            single.len()
        );
    }

    /// Tar-like bytes: names, octal fields, NUL padding, a few odd bytes.
    fn tar_like(x: &mut u64, n: usize) -> Vec<u8> {
        let words: [&[u8]; 10] = [
            b"usr/",
            b"share/",
            b"python3.11/",
            b"\0\0\0\0\0\0\0\0",
            b"0000644\0",
            b"root\0",
            b"lib",
            b".py",
            b"__init__",
            b"\n",
        ];
        let mut out = Vec::with_capacity(n + 16);
        while out.len() < n {
            *x ^= *x << 13;
            *x ^= *x >> 7;
            *x ^= *x << 17;
            match *x % 5 {
                0 => out.push((*x >> 40) as u8),
                _ => out.extend_from_slice(words[(*x % 10) as usize]),
            }
        }
        out.truncate(n);
        out
    }

    /// A block's bytes depend on its input and dictionary alone, not on what its thread
    /// compressed before: a layer written again from its snapshot must come out the
    /// same. A compressor reset for reuse failed this (zlib-rs#459: the match finder
    /// reads the old window past the input) for about one block in nine here.
    #[test]
    fn a_block_does_not_depend_on_what_its_thread_compressed_before() {
        for seed in 1..=40u64 {
            let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            let before = tar_like(&mut x, 64 << 10);
            let dict = tar_like(&mut x, DEFLATE_WINDOW);
            let block = tar_like(&mut x, 512 + (seed as usize * 131) % 4000);
            let compress = || deflate_block(6, &dict, &block, false).unwrap();
            let alone = std::thread::scope(|s| s.spawn(compress).join().unwrap());
            let after = std::thread::scope(|s| {
                s.spawn(|| {
                    deflate_block(6, &[], &before, false).unwrap();
                    compress()
                })
                .join()
                .unwrap()
            });
            assert!(alone == after, "seed {seed}");
        }
    }

    #[test]
    fn incompressible_blocks_are_stored() {
        let mut noise = Vec::with_capacity(2 * PAR_BLOCK);
        let mut x: u64 = 7;
        while noise.len() < 2 * PAR_BLOCK {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            noise.extend_from_slice(&x.to_le_bytes());
        }
        assert!(incompressible(&noise[..PAR_BLOCK]));
        let text: Vec<u8> = b"kiln builds images "
            .iter()
            .copied()
            .cycle()
            .take(PAR_BLOCK)
            .collect();
        assert!(!incompressible(&text));
        // Half noise, half text: compressed.
        let mut mixed = noise[..PAR_BLOCK / 2].to_vec();
        mixed.extend_from_slice(&text[..PAR_BLOCK / 2]);
        assert!(!incompressible(&mixed));
        let gz = roundtrip(&noise, 6);
        // Stored blocks cost 5 bytes per 64 KiB.
        assert!(gz.len() < noise.len() + noise.len() / 1000, "{}", gz.len());
        roundtrip(&[noise.clone(), text.clone(), noise].concat(), 6);
    }
}
