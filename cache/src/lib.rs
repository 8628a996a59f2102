//! kiln's on-disk store.
//!
//! * [`Digest`], [`sha256_of`]: `sha256:<hex>` digests (kiln_oci's, re-exported).
//! * [`Store`]: the store root and its layout ([`Store::open`],
//!   [`Store::default_root`], [`Store::disk_usage`]), content-addressed blobs
//!   ([`Store::put_blob`], [`Store::blob_writer`], ...), the cache index
//!   ([`Store::cache_get`], [`Store::cache_put`]), image tags
//!   ([`Store::tag_set`], [`TagRecord`]) and locks ([`Store::lock_shared`],
//!   [`Store::lock_exclusive`], [`Store::lock_named`]). The [`Store`] docs
//!   say which operations need which lock.
//! * [`Lease`]: what a running build or container uses; [`plan`] and [`Store::trash`]:
//!   garbage collection within a [`Budget`] (`config.toml`'s `[gc]`).
//! * [`StatMemo`]: remembered file hashes so unchanged build-context files
//!   are not re-read.
//! * [`BuildRecord`]: build records in `records/` ([`Store::record_put`], ...), what
//!   miss explanations compare against.
//! * The chunk index ([`Store::record_chunks`], [`Store::chunk_index`]): where the
//!   compressed chunks of layer blobs are, for rebuilds to copy instead of compress.
//! * [`hash_file`]: BLAKE3 content hashes of files (what the stat memo keeps; the
//!   builder's `cachekey` module folds them into COPY/ADD cache keys).
//!
//! Every write is temp file → fsync → rename → fsync of the directory ([`atomic`], which
//! the builder's exporters and containers use too); a crash never leaves a partial file
//! in place. All errors are [`CacheError`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod atomic;
mod blob;
mod chunks;
mod config;
mod digest;
mod error;
mod gc;
mod hash;
mod hex;
mod index;
mod lease;
mod lock;
mod records;
mod remove;
mod spliced;
mod statmemo;
mod store;
mod tags;

pub use blob::BlobWriter;
pub use chunks::{ChunkEntry, ChunkHash, ChunkIndex, ChunkLocation, ChunkResume};
pub use digest::{Digest, sha256_of};
pub use error::{CacheError, Result};
pub use gc::{
    Budget, DEFAULT_MAX_USED_CAP, DiskSpace, GcConfig, GcPlan, GcPolicy, GcReason, GcRecord, GcRef,
    GcUniverse, SizeSpec, modified, plan,
};
pub use hash::{HASH_WINDOW, MMAP_THRESHOLD, hash_file};
pub use lease::{Lease, LeaseInfo};
pub use lock::{LockKind, StoreLock};
pub use records::{
    BaseInput, BuildRecord, BuildStatus, FILESET_GRACE, FileEntry, FileSet, HitSource, Miss,
    RECORD_VERSION, RecordLimits, StepInputs, StepRecord, StepStatus, decode_record, encode_record,
    new_record_id,
};
pub use remove::{remove_all_at, remove_tree};
pub use spliced::{BlobReader, MIN_SPLICE};
pub use statmemo::{ContentHash, StatMemo};
pub use store::{AreaUsage, DiskUsage, LAYOUT_VERSION, STALE_TMP_AGE, Store};
pub use tags::TagRecord;
