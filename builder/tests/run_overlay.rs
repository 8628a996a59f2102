//! How a RUN step's root overlay is mounted: with overlayfs' `volatile` option, so the
//! sandbox's exit does not sync the store's whole filesystem (the unmount of a plain
//! overlay runs a `syncfs` of the upper dir's disk: ~0.3 s per step with a few MiB
//! written). A container's upper dir is mounted again when it restarts, which overlayfs
//! refuses for a volatile one: `kiln run` keeps the plain mount. Needs root and busybox.

use std::fs;
use std::path::Path;

use assert_cmd::Command;
use kiln_test_support::{Workspace, busybox_context, require_root, require_tool};

/// Prints the super options of the overlay mounted at `/` (busybox awk).
const ROOT_OPTIONS: &str = r#"awk '$5 == "/" { for (i = 7; i <= NF; i++) if ($i == "-") { print $(i + 1), $(i + 3) } }' /proc/self/mountinfo"#;

fn kiln(root: &Path) -> Command {
    let mut c = Command::cargo_bin("kiln").unwrap();
    c.env("KILN_ROOT", root);
    c
}

/// Whether overlay super options say `volatile` (`fsync=volatile` since Linux 6.6).
fn is_volatile(opts: &str) -> bool {
    opts.split(',')
        .any(|o| o == "volatile" || o == "fsync=volatile")
}

fn root_mount_options(text: &str) -> Option<&str> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("overlay "))
        .map(str::trim)
}

#[test]
fn run_steps_mount_a_volatile_overlay_and_containers_a_plain_one() {
    require_root!();
    require_tool!("busybox");
    let ws = Workspace::new();
    let root = ws.path("store");
    let base = ws.path("busybox");
    busybox_context(&base);
    kiln(&root)
        .args(["build", "--progress", "quiet", "-t", "busybox:kiln-test"])
        .arg(&base)
        .assert()
        .success();

    let ctx = ws.path("ctx");
    fs::create_dir_all(&ctx).unwrap();
    fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM busybox:kiln-test\nRUN {ROOT_OPTIONS} > /root-mount\nRUN echo second > /second\n"
        ),
    )
    .unwrap();
    kiln(&root)
        .args(["build", "--progress", "plain", "-t", "volatile:1"])
        .arg(&ctx)
        .assert()
        .success();
    // What the step saw, read back from the image the build made.
    let out = kiln(&root)
        .args(["run", "--rm", "volatile:1", "cat", "/root-mount", "/second"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let opts = root_mount_options(&text).unwrap_or_else(|| panic!("no overlay root in {text:?}"));
    assert!(
        is_volatile(opts),
        "RUN's root overlay is not volatile: {opts}"
    );
    assert!(text.contains("second"), "{text}");

    // A container's root: not volatile (its upper is mounted again on restart).
    let out = kiln(&root)
        .args(["run", "--rm", "volatile:1", "sh", "-c", ROOT_OPTIONS])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let opts = root_mount_options(&text).unwrap_or_else(|| panic!("no overlay root in {text:?}"));
    assert!(
        !is_volatile(opts),
        "a container's root overlay is volatile: {opts}"
    );
}
