//! kiln's builder: the worker that executes build ops against the store for the solver
//! (`kiln_solver`), layers (written and unpacked by `kiln_layer`), exporters and
//! reports. The `kiln` command line (`cli`, `commands`) is the binary's own
//! (`src/main.rs`).
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod archive;
pub mod bases;
pub mod build;
pub mod cachekey;
pub mod changes;
pub mod commit;
pub mod containers;
pub mod download;
pub mod explain;
pub mod exporter;
pub mod format;
pub mod git;
pub mod image;
pub mod images;
pub mod interrupt;
pub mod multiplatform;
pub mod plan;
pub mod progress;
pub mod recreate;
pub mod remote;
pub mod remote_cache;
pub mod report;
pub mod snapshots;
pub mod tls;
pub mod trace;
pub mod untrusted;
pub mod usage;
pub mod volumes;
pub mod worker;
