//! kiln's builder: the solver, the worker that executes build ops against the store,
//! layers (written and unpacked by `kiln_layer`), exporters, reports, and the `kiln`
//! command line.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod build;
pub mod cachekey;
pub mod cli;
pub mod commands;
pub mod download;
pub mod exporter;
pub mod image;
pub mod images;
pub mod interrupt;
pub mod plan;
pub mod progress;
pub mod remote;
pub mod report;
pub mod snapshots;
pub mod solver;
pub mod tls;
pub mod untrusted;
pub mod worker;
