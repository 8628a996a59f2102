//! `kiln`: an OCI image builder in the style of BuildKit.

use std::process::ExitCode;

// The command line is the binary's own: it alone reports errors with `anyhow`; the
// library (`kiln_builder`) and the crates below it return typed errors.
mod builds_cmd;
mod cli;
mod commands;
mod container_commands;
mod storage_cmds;

fn main() -> ExitCode {
    // The sandbox re-executes kiln as its init process, exec helper and container
    // monitor (see `kiln_sandbox::linux`).
    if let Some(r) = kiln_sandbox::linux::hidden_main() {
        return match r {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("kiln sandbox: {e}");
                ExitCode::from(kiln_sandbox::linux::SETUP_ERROR_CODE)
            }
        };
    }
    match cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
