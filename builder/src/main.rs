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
    quiet_on_closed_pipe();
    match cli::run() {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::from(CLOSED_PIPE_CODE),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The exit code when the reader of stdout went away (`kiln images | head -1`): a shell's
/// code for a process killed by SIGPIPE, as Docker (a Go program) ends there.
const CLOSED_PIPE_CODE: u8 = 128 + 13;

/// Rust ignores SIGPIPE, so a write to a closed stdout fails, and `println!` panics on
/// it ("failed printing to stdout: Broken pipe"). The listings print with `println!`:
/// this hook makes that panic a quiet exit, as a Unix tool killed by SIGPIPE, with no
/// message and no backtrace. Every other panic goes to the default hook. (Restoring
/// SIGPIPE's default action instead would also kill kiln on a closed pipe to a child
/// process or a socket, which it handles as errors.)
fn quiet_on_closed_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        // std's message: "failed printing to stdout: Broken pipe (os error 32)" (EPIPE).
        let printing = payload.starts_with("failed printing to stdout")
            || payload.starts_with("failed printing to stderr");
        if printing && payload.ends_with("(os error 32)") {
            std::process::exit(CLOSED_PIPE_CODE.into());
        }
        default(info);
    }));
}

/// Whether a command failed because its output's reader went away.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
