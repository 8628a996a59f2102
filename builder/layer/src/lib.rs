//! OCI image layers: writing a directory diff as a deterministic layer blob,
//! and unpacking (untrusted) layer blobs safely.
//!
//! - [`write_layer`] turns a diff directory (the files a build step added or
//!   changed, with overlayfs-style whiteouts) into a `tar`, `tar+gzip` or
//!   `tar+zstd` layer, computing its digest and diff_id in the same pass. gzip and
//!   zstd layers are cut into chunks compressed on their own, which a rebuild can
//!   copy from an earlier blob ([`ChunkCache`]; see the `chunk` module).
//! - [`unpack_layer`] extracts a layer blob under a destination directory
//!   without ever writing outside it, converting whiteouts as asked
//!   ([`WhiteoutMode`]).
//!
//! It knows nothing about builds: the builder calls it to turn a step's diff
//! into a blob and a pulled blob into a snapshot.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

mod chunk;
mod compression;
mod convert;
mod error;
mod list;
mod safe_fs;
mod tar_guard;
mod unpack;
mod whiteout;
mod write;

#[cfg(test)]
mod tests;

pub use chunk::{
    BIG_FILE, BIG_SPLIT, BlobSink, CHUNK_MAX, CHUNK_MIN, CUT_ODDS, CachedChunk, ChunkCache,
    ChunkInfo, ChunkKey, ChunkOrigin, Fingerprint, Resume, ResumePoint, chunk_codec,
};
pub use compression::{
    Compression, MEDIA_TYPE_LAYER_TAR, MEDIA_TYPE_LAYER_TAR_GZIP, MEDIA_TYPE_LAYER_TAR_ZSTD,
};
pub use convert::recompress_layer;
pub use error::LayerError;
pub use list::{ListedEntry, ListedKind, list_layer};
pub use unpack::{
    MAX_PATH_DEPTH, MAX_PATH_LEN, UnpackInfo, UnpackOptions, WhiteoutMode, unpack_layer,
};
pub use whiteout::{OPAQUE_WHITEOUT, WHITEOUT_PREFIX, is_overlay_xattr};
pub use write::{
    EntryKind, LayerEntry, LayerInfo, LayerOptions, OpenArchive, SkipFn, is_empty_dir, write_layer,
    write_layer_entries, write_layer_entries_with,
};
