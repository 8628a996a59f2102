//! `kiln`: an OCI image builder in the style of BuildKit.

use std::process::ExitCode;

fn main() -> ExitCode {
    match kiln_builder::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
