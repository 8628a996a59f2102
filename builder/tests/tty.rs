//! The build display on a real terminal (a pty from `script`, set to 50 columns): no
//! row is wider than the terminal, however long the step's command or output lines.
//! Root and busybox (a real build), and `script` (util-linux).

use std::process::Command;

use kiln_test_support::{Workspace, busybox_context, require_root, require_tool};

/// Rows as a 50-column terminal shows them: colours removed, a new row at `\r`, `\n`
/// and cursor movements (indicatif's redraws), and every 50 columns (indicatif pads
/// each row to the full width and lets the terminal wrap to the next one). Only the
/// live display is read: what indicatif draws before the first newline.
fn rows(raw: &str) -> Vec<String> {
    let live = raw.split('\n').next().unwrap_or("");
    let mut segments = vec![String::new()];
    let mut chars = live.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => segments.push(String::new()),
            '\x1b' if chars.peek() == Some(&'[') => {
                chars.next();
                let mut end = ' ';
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() || c == '~' {
                        end = c;
                        break;
                    }
                }
                if end != 'm' {
                    segments.push(String::new());
                }
            }
            c => segments.last_mut().unwrap().push(c),
        }
    }
    let mut rows = Vec::new();
    for seg in segments {
        let chars: Vec<char> = seg.chars().collect();
        rows.extend(chars.chunks(50).map(|c| c.iter().collect::<String>()));
    }
    rows.retain(|r| !r.trim().is_empty());
    rows
}

/// Regression (issue 15): each long RUN line was drawn whole, wrapped over several rows
/// and scrolled the display on each redraw.
#[test]
fn tty_rows_fit_the_terminal_width() {
    require_root!();
    require_tool!("busybox");
    let script = require_tool!("script");
    let ws = Workspace::new();
    let store = ws.path("store");
    let base = ws.path("busybox");
    busybox_context(&base);
    let kiln = assert_cmd::cargo::cargo_bin("kiln");
    let status = Command::new(&kiln)
        .env("KILN_ROOT", &store)
        .args(["build", "-q", "-t", "busybox:kiln-test"])
        .arg(&base)
        .status()
        .unwrap();
    assert!(status.success());
    let long = "x".repeat(200);
    let ctx = ws.context(
        "app",
        &format!(
            "FROM busybox:kiln-test\nRUN for i in 1 2 3 4 5 6 7 8; do echo line$i-{long}; done # {long}\n"
        ),
    );
    let cmd = format!(
        "stty cols 50 rows 40; KILN_ROOT={} KILN_NO_RECORD=1 {} build --progress tty {}",
        store.display(),
        kiln.display(),
        ctx.display()
    );
    let out = Command::new(script)
        .args(["-qec", &cmd, "/dev/null"])
        .output()
        .unwrap();
    let raw = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{raw}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows = rows(&raw);
    // The RUN step's row: the spinner (or `=>`), the cut label and the time at the
    // right edge; each output row under it: the line, cut with `…`.
    let run_rows: Vec<&String> = rows.iter().filter(|r| r.contains("RUN for")).collect();
    assert!(!run_rows.is_empty(), "no RUN row drawn:\n{rows:#?}");
    for r in run_rows {
        assert!(
            r.trim_end().ends_with('s') && r.contains("#2 ") && !r.starts_with("  line"),
            "the RUN row is not one terminal row: {r:?}\n{rows:#?}"
        );
    }
    let output_rows: Vec<&String> = rows.iter().filter(|r| r.contains("line")).collect();
    assert!(
        output_rows.iter().any(|r| r.starts_with("  line8-x")),
        "the step's last output lines are not shown under it:\n{rows:#?}"
    );
    for r in output_rows {
        assert!(
            r.starts_with("  line") && r.trim_end().ends_with('…'),
            "an output line is not cut to one row: {r:?}\n{rows:#?}"
        );
    }
}
