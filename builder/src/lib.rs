//! kiln's builder: the solver, the worker that executes build ops against the store,
//! layers, exporters, reports, and the `kiln` command line.
#![deny(missing_docs)]

pub mod cli;
pub mod fileops;

pub mod plan;
pub mod solver;
