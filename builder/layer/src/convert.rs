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
    out: impl crate::BlobSink,
    what: &str,
) -> Result<LayerInfo, LayerError> {
    let malformed = |reason: &str, source: io::Error| LayerError::Malformed {
        reason: format!("{what}: {reason}"),
        source,
    };
    let (_, mut tar) = detect(blob).map_err(|e| malformed("detect compression", e))?;
    let mut sink = start_sink(opts, out);
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

/// Reads the next entry's headers (parsed by the `tar` crate, as the unpacker's
/// guard does); `None` at the end-of-archive block.
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
        let header = tar::Header::from_byte_slice(block);
        let kind = header.entry_type();
        let size = header.entry_size()?;
        if kind.is_pax_local_extensions() {
            if size > MAX_PAX {
                return Err(bad("extension header too large"));
            }
            let padded = size.div_ceil(BLOCK as u64) as usize * BLOCK;
            let at = raw.len();
            raw.resize(at + padded, 0);
            r.read_exact(&mut raw[at..])?;
            for ext in tar::PaxExtensions::new(&raw[at..at + size as usize]) {
                let ext = ext?;
                match ext.key_bytes() {
                    b"path" => pax_path = Some(ext.value_bytes().to_vec()),
                    b"size" => {
                        let v = ext.value().ok().and_then(|s| s.parse().ok());
                        pax_size = Some(v.ok_or_else(|| bad("bad PAX size"))?);
                    }
                    _ => {}
                }
            }
            continue;
        }
        if kind.is_pax_global_extensions() || kind.is_gnu_longname() || kind.is_gnu_longlink() {
            return Err(bad("a header kind kiln does not write"));
        }
        let regular = kind.is_file() || kind.is_contiguous();
        let name = pax_path.unwrap_or_else(|| header.path_bytes().into_owned());
        return Ok(Some(Headers {
            name,
            size: if regular { pax_size.unwrap_or(size) } else { 0 },
            regular,
            dir: kind.is_dir(),
            raw,
        }));
    }
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}
