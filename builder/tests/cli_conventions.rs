//! Command-line conventions CI scripts rely on: a closed pipe ends a command quietly
//! (`kiln images | head -1`), colour only on a terminal and never with `NO_COLOR`, shell
//! completion scripts, and unknown images answered with the close names the store has.

use std::process::{Command as Proc, Stdio};

use assert_cmd::Command;
use kiln_test_support::{Workspace, busybox_context, require_root, require_tool};

const BASE: &str = "busybox:kiln-test";

fn kiln(ws: &Workspace) -> Command {
    let mut c = Command::cargo_bin("kiln").unwrap();
    c.env("KILN_ROOT", ws.path("store"))
        .env("KILN_NO_RECORD", "1")
        .env("RUST_BACKTRACE", "1");
    c
}

/// Runs kiln with `args` and a stdout whose reader is already gone: the first write fails
/// with EPIPE. Returns (exit code, stderr).
fn with_closed_stdout(ws: &Workspace, args: &[&str]) -> (Option<i32>, String) {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Proc::new(assert_cmd::cargo::cargo_bin("kiln"))
        .env("KILN_ROOT", ws.path("store"))
        .env("KILN_NO_RECORD", "1")
        .env("RUST_BACKTRACE", "1")
        .args(args)
        .stdout(Stdio::from(writer))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every listing exits as a Unix tool killed by SIGPIPE (the shell's 141, as Docker):
/// no panic, no backtrace, nothing on stderr.
#[test]
fn closed_pipe_ends_quietly() {
    let ws = Workspace::new();
    for args in [
        &["images"][..],
        &["ps", "-a"],
        &["volume", "ls"],
        &["builds", "ls"],
        &["system", "df"],
        &["completion", "bash"],
    ] {
        let (code, err) = with_closed_stdout(&ws, args);
        assert_eq!(err, "", "kiln {args:?}");
        assert_eq!(code, Some(141), "kiln {args:?}: {err}");
    }
}

/// `kiln history IMAGE | head -1` (an image needs a build: root and busybox).
#[test]
fn closed_pipe_after_history() {
    require_root!();
    require_tool!("busybox");
    let ws = Workspace::new();
    let ctx = ws.path("busybox");
    busybox_context(&ctx);
    kiln(&ws)
        .args(["build", "-q", "-t", BASE])
        .arg(&ctx)
        .assert()
        .success();
    for args in [&["history", BASE][..], &["inspect", BASE]] {
        let (code, err) = with_closed_stdout(&ws, args);
        assert_eq!(err, "", "kiln {args:?}");
        assert_eq!(code, Some(141), "kiln {args:?}");
    }
    // Through a real shell pipeline too, as a CI script writes it.
    let kiln_bin = assert_cmd::cargo::cargo_bin("kiln");
    let out = Proc::new("bash")
        .arg("-c")
        .arg(format!(
            "set -o pipefail; {} history {BASE} | head -0; echo \"rc=$?\"",
            kiln_bin.display()
        ))
        .env("KILN_ROOT", ws.path("store"))
        .output()
        .unwrap();
    // 141 when kiln wrote after head exited, 0 when its lines fit in the pipe before:
    // which one is a race; quiet either way.
    let rc = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(rc == "rc=141\n" || rc == "rc=0\n", "{rc}");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "");
}

/// Colour (clap's errors and help are the only coloured output) appears on a terminal
/// only: never when stdout/stderr are not a tty, never with `NO_COLOR` set.
#[test]
fn colour_only_on_a_terminal_without_no_color() {
    require_tool!("script");
    let ws = Workspace::new();
    let kiln_bin = assert_cmd::cargo::cargo_bin("kiln");
    // `script` gives the command a pseudo-terminal.
    let on_tty = |no_color: bool| {
        let mut c = Proc::new("script");
        c.args([
            "-qec",
            &format!("{} build --bogus", kiln_bin.display()),
            "/dev/null",
        ])
        .env("KILN_ROOT", ws.path("store"))
        // A terminal that has colours (without TERM, none is assumed).
        .env("TERM", "xterm")
        .env_remove("CLICOLOR_FORCE")
        .env_remove("CLICOLOR");
        if no_color {
            c.env("NO_COLOR", "1");
        } else {
            c.env_remove("NO_COLOR");
        }
        let out = c.output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let coloured = on_tty(false);
    assert!(coloured.contains("unexpected argument"), "{coloured:?}");
    assert!(coloured.contains('\x1b'), "a tty gets colour: {coloured:?}");
    let plain = on_tty(true);
    assert!(plain.contains("unexpected argument"), "{plain:?}");
    assert!(!plain.contains('\x1b'), "NO_COLOR: {plain:?}");
    let out = kiln(&ws)
        .env_remove("NO_COLOR")
        .args(["build", "--bogus"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unexpected argument"), "{err}");
    assert!(!err.contains('\x1b'), "not a tty: {err:?}");
}

/// `kiln completion bash|zsh|fish` prints each shell's script, generated from the
/// command line itself (today's flags included); bash loads it.
#[test]
fn completion_scripts() {
    let ws = Workspace::new();
    let script = |shell: &str| {
        let out = kiln(&ws).args(["completion", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = script("bash");
    assert!(bash.contains("_kiln()"), "{bash}");
    assert!(bash.contains("--iidfile"));
    assert!(bash.contains("--metadata-file"));
    assert!(script("zsh").starts_with("#compdef kiln"));
    assert!(script("fish").contains("complete -c kiln"));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("kiln.bash");
    std::fs::write(&file, &bash).unwrap();
    let out = Proc::new("bash")
        .arg("-c")
        .arg(format!("source {} && complete -p kiln", file.display()))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "complete -o bashdefault -o default -o nosort -F _kiln kiln",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = kiln(&ws).args(["completion", "tcsh"]).output().unwrap();
    assert!(!out.status.success());
}

/// A misspelt image name: every command that looks images up names the close tag.
#[test]
fn unknown_images_suggest_close_names() {
    require_root!();
    require_tool!("busybox");
    let ws = Workspace::new();
    let ctx = ws.path("busybox");
    busybox_context(&ctx);
    kiln(&ws)
        .args(["build", "-q", "-t", "demo:latest"])
        .arg(&ctx)
        .assert()
        .success();
    let hint = "(did you mean \"demo:latest\"?)";
    for (args, want, code) in [
        (
            &["history", "demo:lates"][..],
            format!("error: no such image: demo:lates {hint}\n"),
            1,
        ),
        (
            &["rmi", "dmeo"],
            format!("error: No such image: dmeo {hint}\n"),
            1,
        ),
        (
            &["inspect", "demo:lates"],
            format!("error: No such object: demo:lates {hint}\n"),
            125,
        ),
        (
            &["tag", "demo:lates", "x:1"],
            format!("error: no such image: demo:lates {hint}\n"),
            1,
        ),
    ] {
        let out = kiln(&ws).args(args).output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stderr), want, "kiln {args:?}");
        assert_eq!(out.status.code(), Some(code), "kiln {args:?}");
    }
    let out = kiln(&ws)
        .args(["run", "--rm", "--pull", "never", "demo:lates", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("error: Unable to find image 'demo:lates': "),
        "{err}"
    );
    assert!(err.ends_with(&format!(" {hint}\n")), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(out.status.code(), Some(125));
    // Far from every tag: no suggestion.
    let out = kiln(&ws).args(["history", "nginx"]).output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "error: no such image: nginx\n"
    );
}
