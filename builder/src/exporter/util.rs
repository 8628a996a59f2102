//! Shared pieces of the exporters: atomic writes (through [`kiln_cache::atomic`]),
//! linking blobs from the store,
//! deterministic tar entries, hashing and layer decompression.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, Write};
use std::path::{Path, PathBuf};

use kiln_cache::atomic::{self, AtomicError};
use kiln_layer::Compression;
use kiln_oci::digest::Hashing;

use super::{BlobPath, ExportError, Result, parent_dir};
use crate::image::LayerDesc;

/// Mode of the files the exporters create.
pub(crate) const FILE_MODE: u32 = 0o644;
/// Mode of directory entries in archives.
pub(crate) const DIR_MODE: u32 = 0o755;

/// Wraps an `io::Error` with the operation and path.
pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ExportError {
    let path = path.to_path_buf();
    move |source| ExportError::Io { op, path, source }
}

/// An atomic write's error as the exporters report it.
fn atomic_err(e: AtomicError<ExportError>) -> ExportError {
    match e {
        AtomicError::Write(e) => e,
        AtomicError::Io { op, path, source } => ExportError::Io { op, path, source },
    }
}

/// Writes `dest` atomically ([`kiln_cache::atomic`]) with what `write` puts in it.
pub(crate) fn write_with(dest: &Path, write: impl FnOnce(&mut File) -> Result<()>) -> Result<()> {
    atomic::write_with(dest, write).map_err(atomic_err)
}

/// Writes `data` to `dest` atomically.
pub(crate) fn atomic_write(dest: &Path, data: &[u8]) -> Result<()> {
    write_with(dest, |f| f.write_all(data).map_err(io_err("writing", dest)))
}

/// Opens a layer blob in the store and checks its size against the descriptor.
pub(crate) fn open_layer(layer: &LayerDesc, blob_path: BlobPath<'_>) -> Result<(File, PathBuf)> {
    let path = blob_path(&layer.digest).map_err(|source| ExportError::BlobFile {
        digest: layer.digest.clone(),
        source,
    })?;
    let blob_err = |source| ExportError::Blob {
        digest: layer.digest.clone(),
        path: path.clone(),
        source,
    };
    let file = File::open(&path).map_err(blob_err)?;
    let actual = file.metadata().map_err(blob_err)?.len();
    if actual != layer.size {
        return Err(ExportError::BlobSize {
            digest: layer.digest.clone(),
            path,
            expected: layer.size,
            actual,
        });
    }
    Ok((file, path))
}

/// Puts a layer blob at `dest`: a hard link to the store's copy when possible (same
/// filesystem), else a copy through a temporary file. An existing `dest` of the right
/// size is kept (blobs are content-addressed).
pub(crate) fn link_or_copy_layer(
    layer: &LayerDesc,
    blob_path: BlobPath<'_>,
    dest: &Path,
) -> Result<()> {
    let (mut src, src_path) = open_layer(layer, blob_path)?;
    match fs::symlink_metadata(dest) {
        Ok(m) if m.is_file() && m.len() == layer.size => return Ok(()),
        Ok(_) => fs::remove_file(dest).map_err(io_err("removing stale blob", dest))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err("inspecting", dest)(e)),
    }
    if fs::hard_link(&src_path, dest).is_ok() {
        return Ok(());
    }
    write_with(dest, |f| {
        io::copy(&mut src, f).map_err(|source| ExportError::Blob {
            digest: layer.digest.clone(),
            path: src_path.clone(),
            source,
        })?;
        Ok(())
    })
}

/// Writes a small content-addressed blob unless an identical one is already there.
pub(crate) fn write_blob(dest: &Path, data: &[u8]) -> Result<()> {
    match fs::read(dest) {
        Ok(existing) if existing == data => Ok(()),
        Ok(_) => atomic_write(dest, data),
        Err(e) if e.kind() == io::ErrorKind::NotFound => atomic_write(dest, data),
        Err(e) => Err(io_err("reading", dest)(e)),
    }
}

/// A tar header with fixed metadata: owner 0:0, mtime 0, mode 0644 or 0755, and the
/// name stored verbatim (all exporter paths are short ASCII, so no extensions are
/// needed; directories keep their trailing `/`).
pub(crate) fn tar_header(name: &str, size: u64, dir: bool) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let slot = &mut h.as_old_mut().name;
    assert!(
        name.len() < slot.len() && name.is_ascii(),
        "archive path {name:?} must be short ASCII"
    );
    slot[..name.len()].copy_from_slice(name.as_bytes());
    if dir {
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(DIR_MODE);
        h.set_size(0);
    } else {
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(FILE_MODE);
        h.set_size(size);
    }
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    h
}

/// Appends a directory entry.
pub(crate) fn append_dir<W: Write>(tar: &mut tar::Builder<W>, name: &str) -> io::Result<()> {
    tar.append(&tar_header(name, 0, true), io::empty())
}

/// Appends a regular file of exactly `size` bytes read from `data`; fails if `data` is
/// shorter (the archive would be corrupt).
pub(crate) fn append_file<W: Write, R: Read>(
    tar: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: R,
) -> io::Result<()> {
    let mut counted = Counted {
        inner: data.take(size),
        count: 0,
    };
    tar.append(&tar_header(name, size, false), &mut counted)?;
    if counted.count != size {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("{name}: expected {size} bytes, read {}", counted.count),
        ));
    }
    Ok(())
}

struct Counted<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// A layer's uncompressed tar, ready to be appended to an archive.
pub(crate) struct UncompressedLayer {
    /// The tar's bytes, positioned at the start.
    pub(crate) file: File,
    /// The layer blob's path in the store (for messages).
    pub(crate) path: PathBuf,
    /// Its length.
    pub(crate) size: u64,
    /// Whether the content was already checked against the diff_id (false for blobs
    /// that were stored uncompressed: those are hashed while they are appended).
    pub(crate) verified: bool,
}

/// Opens a layer blob and gives its uncompressed tar: the blob itself if it is not
/// compressed, else a temporary file in `scratch_dir` holding the decompressed
/// content, checked against the layer's diff_id.
pub(crate) fn uncompressed_layer(
    layer: &LayerDesc,
    blob_path: BlobPath<'_>,
    scratch_dir: &Path,
) -> Result<UncompressedLayer> {
    let (file, path) = open_layer(layer, blob_path)?;
    let blob_err = |source| ExportError::Blob {
        digest: layer.digest.clone(),
        path: path.clone(),
        source,
    };
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let compression = Compression::sniff(reader.fill_buf().map_err(blob_err)?);
    if compression == Compression::Uncompressed {
        let mut file = reader.into_inner();
        file.rewind().map_err(blob_err)?;
        return Ok(UncompressedLayer {
            file,
            path,
            size: layer.size,
            verified: false,
        });
    }
    let scratch = tempfile::tempfile_in(scratch_dir)
        .map_err(io_err("creating a temporary file in", scratch_dir))?;
    let mut out = Hashing::new(io::BufWriter::with_capacity(256 * 1024, scratch));
    let size = match compression {
        // gzip may have several members (as pigz writes), zstd several frames.
        Compression::Gzip { .. } => {
            io::copy(&mut flate2::bufread::MultiGzDecoder::new(reader), &mut out)
        }
        Compression::Zstd { .. } => zstd::stream::read::Decoder::with_buffer(reader)
            .and_then(|mut d| io::copy(&mut d, &mut out)),
        Compression::Uncompressed => unreachable!("handled above"),
    }
    .map_err(blob_err)?;
    let (writer, actual, _) = out.finish();
    if actual != layer.diff_id {
        return Err(ExportError::DiffIdMismatch {
            digest: layer.digest.clone(),
            diff_id: layer.diff_id.clone(),
            actual,
        });
    }
    let mut file = writer
        .into_inner()
        .map_err(|e| io_err("writing a temporary file in", scratch_dir)(e.into_error()))?;
    file.rewind()
        .map_err(io_err("rewinding a temporary file in", scratch_dir))?;
    Ok(UncompressedLayer {
        file,
        path,
        size,
        verified: true,
    })
}

/// What an archive entry holds.
pub(crate) enum Source<'a> {
    /// A directory.
    Dir,
    /// Bytes in memory.
    Bytes(Vec<u8>),
    /// A layer blob from the store as it is (checked against its digest).
    Blob(&'a LayerDesc),
    /// A layer's uncompressed tar (checked against its diff_id).
    Uncompressed(&'a LayerDesc),
}

/// Writes a deterministic tar of `entries` (in their sorted order) to `dest`,
/// atomically.
pub(crate) fn write_archive(
    dest: &Path,
    entries: &std::collections::BTreeMap<String, Source<'_>>,
    blob_path: BlobPath<'_>,
) -> Result<()> {
    write_with(dest, |file| write_tar(file, dest, entries, blob_path))
}

/// The tar of [`write_archive`], into `file` (errors name `dest`).
fn write_tar(
    file: &mut File,
    dest: &Path,
    entries: &std::collections::BTreeMap<String, Source<'_>>,
    blob_path: BlobPath<'_>,
) -> Result<()> {
    let write_err = io_err("writing", dest);
    let mut tar = tar::Builder::new(io::BufWriter::with_capacity(256 * 1024, file));
    for (name, source) in entries {
        match source {
            Source::Dir => append_dir(&mut tar, name).map_err(io_err("writing", dest))?,
            Source::Bytes(data) => append_file(&mut tar, name, data.len() as u64, &data[..])
                .map_err(io_err("writing", dest))?,
            Source::Blob(layer) => {
                let (file, path) = open_layer(layer, blob_path)?;
                let mut reader = Hashing::new(BufReader::with_capacity(256 * 1024, file));
                append_file(&mut tar, name, layer.size, &mut reader).map_err(|source| {
                    ExportError::Blob {
                        digest: layer.digest.clone(),
                        path: path.clone(),
                        source,
                    }
                })?;
                let (_, actual, _) = reader.finish();
                if actual != layer.digest {
                    return Err(ExportError::DigestMismatch {
                        digest: layer.digest.clone(),
                        path,
                        actual,
                    });
                }
            }
            Source::Uncompressed(layer) => {
                let scratch = parent_dir(dest);
                let un = uncompressed_layer(layer, blob_path, scratch)?;
                let blob_err = |source| ExportError::Blob {
                    digest: layer.digest.clone(),
                    path: un.path.clone(),
                    source,
                };
                let reader = BufReader::with_capacity(256 * 1024, un.file);
                if un.verified {
                    append_file(&mut tar, name, un.size, reader).map_err(blob_err)?;
                    continue;
                }
                let mut reader = Hashing::new(reader);
                append_file(&mut tar, name, un.size, &mut reader).map_err(blob_err)?;
                let (_, actual, _) = reader.finish();
                if actual != layer.diff_id {
                    return Err(ExportError::DiffIdMismatch {
                        digest: layer.digest.clone(),
                        diff_id: layer.diff_id.clone(),
                        actual,
                    });
                }
            }
        }
    }
    tar.into_inner()
        .and_then(|w| w.into_inner().map(|_| ()).map_err(|e| e.into_error()))
        .map_err(write_err)
}
