//! kiln's on-disk store.
//!
//! * [`Digest`], [`sha256_of`], [`Sha256Writer`]: `sha256:<hex>` digests.
//! * [`Store`]: the store root and its layout ([`Store::open`],
//!   [`Store::default_root`], [`Store::disk_usage`]), content-addressed blobs
//!   ([`Store::put_blob`], [`Store::blob_writer`], ...), the cache index
//!   ([`Store::cache_get`], [`Store::cache_put`]), image tags
//!   ([`Store::tag_set`], [`TagRecord`]) and locks ([`Store::lock_shared`],
//!   [`Store::lock_exclusive`], [`Store::lock_named`]). The [`Store`] docs
//!   say which operations need which lock.
//! * [`StatMemo`]: remembered file hashes so unchanged build-context files
//!   are not re-read.
//! * [`hash_file`], [`checksum_tree`], [`TreeDigest`]: content digests of
//!   file-tree selections for COPY/ADD cache keys.
//!
//! Every write is temp file → fsync → rename → fsync of the directory; a
//! crash never leaves a partial file in place. All errors are [`CacheError`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod blob;
mod digest;
mod error;
mod index;
mod lock;
mod remove;
mod statmemo;
mod store;
mod tags;
mod tree;

pub use blob::BlobWriter;
pub use digest::{Digest, Sha256Writer, sha256_of};
pub use error::{CacheError, Result};
pub use lock::{LockKind, StoreLock};
pub use remove::{remove_all_at, remove_tree};
pub use statmemo::{ContentHash, StatMemo};
pub use store::{AreaUsage, DiskUsage, LAYOUT_VERSION, STALE_TMP_AGE, Store};
pub use tags::TagRecord;
pub use tree::{
    FileKind, Filter, MMAP_THRESHOLD, TreeChecksum, TreeDigest, TreeEntry, checksum_tree, hash_file,
};
