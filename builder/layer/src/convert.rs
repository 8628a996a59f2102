//! Converting a layer kiln wrote to another compression, with the bytes a fresh
//! write in that compression gives (BuildKit converts cached layers at export the same
//! way): the tar is read back entry by entry and fed to the same chunker, told of the
//! same entry boundaries [`crate::write_layer`] gives it, so the chunks, and the
//! blob, come out the same.

use std::io::{self, Read, Write};
use std::path::Path;

use super::compression::detect;
use super::error::LayerError;
use super::write::{LayerInfo, LayerOptions, finish_sink, start_sink};

const BLOCK: usize = 512;
/// The largest PAX extension header read into memory (kiln writes a few records).
const MAX_PAX: u64 = 1 << 20;
/// What marks an opaque directory in a layer; [`crate::write_layer`] writes it right
/// after its directory, as part of the same entry for the chunker.
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// Writes the layer `blob` (gzip, zstd or plain tar, as kiln wrote it) to `out`
/// compressed as `opts.compression` says. The uncompressed tar, hence the diff_id, is
/// the same; for a layer kiln wrote, the blob is the one writing the same files in that
/// compression gives. `what` names the layer in errors.
pub fn recompress_layer(
    blob: impl Read,
    opts: &LayerOptions,
    out: impl Write,
    what: &str,
) -> Result<LayerInfo, LayerError> {
    let malformed = |reason: &str, source: io::Error| LayerError::Malformed {
        reason: format!("{what}: {reason}"),
        source,
    };
    let (_, mut tar) = detect(blob).map_err(|e| malformed("detect compression", e))?;
    let mut sink = start_sink(opts, out, Path::new(what))?;
    let mut entries = 0u64;
    // A directory whose entry ended, until the next entry shows whether its opaque
    // marker follows (then both are one entry for the chunker).
    let mut open_dir: Option<Vec<u8>> = None;
    while let Some(head) = read_headers(&mut tar).map_err(|e| malformed("read tar header", e))? {
        let marker_of_open_dir = open_dir
            .as_ref()
            .is_some_and(|dir| head.name.strip_prefix(dir.as_slice()) == Some(OPAQUE_MARKER));
        if !marker_of_open_dir {
            if let Some(dir) = open_dir.take() {
                sink.end_entry(&dir, None)
                    .map_err(|e| malformed("write chunk", e))?;
            }
            let size = if head.regular { head.size } else { 0 };
            sink.begin_entry(size)
                .map_err(|e| malformed("write chunk", e))?;
        }
        sink.write_all(&head.raw)
            .map_err(|e| malformed("write tar header", e))?;
        let padded = head.size.div_ceil(BLOCK as u64) * BLOCK as u64;
        let copied = io::copy(&mut (&mut tar).take(padded), &mut sink)
            .map_err(|e| malformed("copy entry data", e))?;
        if copied != padded {
            return Err(malformed(
                "copy entry data",
                io::Error::new(io::ErrorKind::UnexpectedEof, "tar ends inside an entry"),
            ));
        }
        entries += 1;
        if marker_of_open_dir {
            let dir = open_dir.take().unwrap_or_default();
            sink.end_entry(&dir, None)
                .map_err(|e| malformed("write chunk", e))?;
        } else if head.dir {
            open_dir = Some(head.name);
        } else {
            sink.end_entry(&head.name, None)
                .map_err(|e| malformed("write chunk", e))?;
        }
    }
    if let Some(dir) = open_dir.take() {
        sink.end_entry(&dir, None)
            .map_err(|e| malformed("write chunk", e))?;
    }
    // The end-of-archive blocks (the first one is read already) and anything after
    // them go as they are.
    sink.write_all(&[0u8; BLOCK])
        .map_err(|e| malformed("write tar trailer", e))?;
    io::copy(&mut tar, &mut sink).map_err(|e| malformed("copy tar trailer", e))?;
    finish_sink(sink, opts, entries, Path::new(what))
}

/// One entry's headers as read: the raw bytes (a PAX extension header with its
/// records, if any, then the entry's own header) and what the chunker needs.
struct Headers {
    raw: Vec<u8>,
    name: Vec<u8>,
    size: u64,
    regular: bool,
    dir: bool,
}

/// Reads the next entry's headers; `None` at the end-of-archive block.
fn read_headers(r: &mut impl Read) -> io::Result<Option<Headers>> {
    let mut raw = Vec::with_capacity(BLOCK);
    let mut pax_path = None;
    let mut pax_size = None;
    loop {
        let start = raw.len();
        raw.resize(start + BLOCK, 0);
        r.read_exact(&mut raw[start..])?;
        let block = &raw[start..];
        if block.iter().all(|&b| b == 0) {
            if start == 0 {
                return Ok(None);
            }
            return Err(bad("end of archive after an extension header"));
        }
        let typeflag = block[156];
        let size = parse_size(&block[124..136])?;
        match typeflag {
            b'x' => {
                if size > MAX_PAX {
                    return Err(bad("extension header too large"));
                }
                let padded = size.div_ceil(BLOCK as u64) as usize * BLOCK;
                let at = raw.len();
                raw.resize(at + padded, 0);
                r.read_exact(&mut raw[at..])?;
                for (key, value) in pax_records(&raw[at..at + size as usize])? {
                    match key {
                        b"path" => pax_path = Some(value.to_vec()),
                        b"size" => {
                            let v = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                            pax_size = Some(v.ok_or_else(|| bad("bad PAX size"))?);
                        }
                        _ => {}
                    }
                }
            }
            b'g' | b'L' | b'K' => return Err(bad("a header kind kiln does not write")),
            _ => {
                let name = pax_path.unwrap_or_else(|| ustar_name(block));
                let size = match typeflag {
                    b'0' | 0 | b'7' => pax_size.unwrap_or(size),
                    _ => 0,
                };
                return Ok(Some(Headers {
                    raw,
                    name,
                    size,
                    regular: matches!(typeflag, b'0' | 0 | b'7'),
                    dir: typeflag == b'5',
                }));
            }
        }
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The name of a ustar header: `prefix/name` (NUL-terminated fields).
fn ustar_name(block: &[u8]) -> Vec<u8> {
    let field = |f: &[u8]| {
        f.iter()
            .position(|&b| b == 0)
            .map_or(f, |n| &f[..n])
            .to_vec()
    };
    let name = field(&block[..100]);
    let prefix = if &block[257..263] == b"ustar\0" {
        field(&block[345..500])
    } else {
        Vec::new()
    };
    if prefix.is_empty() {
        name
    } else {
        [prefix.as_slice(), b"/", name.as_slice()].concat()
    }
}

/// A header's size field: octal, or base-256 when its high bit is set.
fn parse_size(field: &[u8]) -> io::Result<u64> {
    if field[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| bad("size too large"))?;
        }
        return Ok(v);
    }
    let digits: Vec<u8> = field
        .iter()
        .copied()
        .skip_while(|&b| b == b' ')
        .take_while(|&b| (b'0'..=b'7').contains(&b))
        .collect();
    if digits.is_empty() {
        return Ok(0);
    }
    let s = std::str::from_utf8(&digits).map_err(|_| bad("bad size"))?;
    u64::from_str_radix(s, 8).map_err(|_| bad("bad size"))
}

/// PAX records `"<len> <key>=<value>\n"`.
fn pax_records(mut data: &[u8]) -> io::Result<Vec<(&[u8], &[u8])>> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("bad PAX record"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > sp + 1 && l <= data.len())
            .ok_or_else(|| bad("bad PAX record length"))?;
        let record = &data[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("bad PAX record"))?;
        out.push((&record[..eq], &record[eq + 1..]));
        data = &data[len..];
    }
    Ok(out)
}
