//! `kiln`: an OCI image builder in the style of BuildKit.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox re-executes kiln as its init process (see `kiln_sandbox::linux`).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(kiln_sandbox::linux::INIT_ARG)) {
        let spec = args.next().unwrap_or_default();
        return match kiln_sandbox::linux::init_main(std::path::Path::new(&spec)) {
            Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => {
                eprintln!("kiln sandbox: {e}");
                ExitCode::from(kiln_sandbox::linux::SETUP_ERROR_CODE)
            }
        };
    }
    match kiln_builder::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
