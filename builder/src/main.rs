//! `kiln`: an OCI image builder in the style of BuildKit.

use std::process::ExitCode;

fn main() -> ExitCode {
    // The sandbox re-executes kiln as its init process (see `sandbox::linux`).
    let mut args = std::env::args_os();
    if args.nth(1).as_deref() == Some(std::ffi::OsStr::new(kiln_builder::sandbox::linux::INIT_ARG))
    {
        let spec = args.next().unwrap_or_default();
        let code = kiln_builder::sandbox::linux::init_main(std::path::Path::new(&spec));
        return ExitCode::from(code.clamp(0, 255) as u8);
    }
    match kiln_builder::cli::run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
