//! The container commands at the command line, as a user meets them: `ps --format`,
//! real terminals (`run -it`, `exec -it` under `script`), signals sent to a foreground
//! `kiln run`, `--pull` against a local registry, and the Debian tier. Root and
//! busybox-static (`require_root!`, `require_tool!`), over a busybox image built by kiln
//! in a store of the test's own.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command as Proc, Output, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use kiln_test_support::{Workspace, copy_dir, repo_root, require_root, require_tool, wait};

macro_rules! needs {
    () => {
        require_root!();
        require_tool!("busybox");
    };
}

const IMAGE: &str = "busybox:kiln-test";

struct Env {
    ws: Workspace,
}

impl Env {
    /// A store holding the busybox image.
    fn new() -> Env {
        let env = Env {
            ws: Workspace::new(),
        };
        let ctx = env.ws.path("busybox");
        copy_dir(&repo_root().join("testdata/bases/busybox"), &ctx);
        let st = Proc::new("bash")
            .arg(repo_root().join("testdata/bases/busybox/make-rootfs.sh"))
            .arg(ctx.join("rootfs"))
            .status()
            .unwrap();
        assert!(st.success(), "make-rootfs.sh failed");
        env.kiln()
            .args(["build", "--progress", "quiet", "-t", IMAGE])
            .arg(&ctx)
            .assert()
            .success();
        env
    }

    fn root(&self) -> PathBuf {
        self.ws.path("store")
    }

    fn kiln(&self) -> Command {
        let mut c = Command::cargo_bin("kiln").unwrap();
        c.env("KILN_ROOT", self.root());
        c
    }

    fn out(&self, args: &[&str]) -> Output {
        self.kiln().args(args).output().unwrap()
    }

    /// Runs kiln with `args`, which must succeed; its stdout (untrimmed: layouts matter).
    fn ok(&self, args: &[&str]) -> String {
        let o = self.out(args);
        assert!(
            o.status.success(),
            "kiln {args:?} failed ({}):\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ps_and_images_format_as_docker() {
    needs!();
    let env = Env::new();
    env.ok(&[
        "run",
        "--name",
        "fmt-a",
        "-v",
        "fmtvol:/v",
        IMAGE,
        "sh",
        "-c",
        "head -c 10000 /dev/zero > /f",
    ]);
    let id = env.ok(&["ps", "-a", "-q", "--no-trunc"]).trim().to_string();

    // Plain templates: one line per container, `\t` a tab, no header.
    assert_eq!(
        env.ok(&[
            "ps",
            "-a",
            "--format",
            "{{.Names}}\\t{{.State}}|{{.Image}}|{{.Mounts}}"
        ]),
        format!("fmt-a\texited|{IMAGE}|fmtvol\n")
    );
    assert_eq!(
        env.ok(&["ps", "-a", "--format", "{{.ID}}"]),
        format!("{}\n", &id[..12])
    );
    assert_eq!(
        env.ok(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"]),
        format!("{id} \"sh -c head -c 10000 /dev/zero > /f\"\n")
    );
    // Running ones only without -a.
    assert_eq!(env.ok(&["ps", "--format", "{{.ID}}"]), "");

    // table: Docker's headers, tabwriter columns (at least 10 wide, 3 spaces apart).
    let table = env.ok(&[
        "ps",
        "-a",
        "--format",
        "table {{.Names}}\\t{{.State}}\\t{{.Status}}",
    ]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines[0], "NAMES     STATE     STATUS", "{table}");
    assert!(
        lines[1].starts_with("fmt-a     exited    Exited (0) "),
        "{table}"
    );
    assert_eq!(lines.len(), 2, "{table}");
    // The default table is Docker's too.
    let default = env.ok(&["ps", "-a"]);
    assert!(
        default.starts_with("CONTAINER ID   IMAGE               COMMAND                  CREATED"),
        "{default}"
    );

    // `.Size` computes sizes without -s: about the 10 kB written.
    let size = env.ok(&["ps", "-a", "--format", "{{.Size}}"]);
    assert!(size.starts_with("10kB (virtual "), "{size}");

    // {{json .}}: the row as an object.
    let json: serde_json::Value =
        serde_json::from_str(env.ok(&["ps", "-a", "--format", "{{json .}}"]).trim()).unwrap();
    assert_eq!(json["Names"], "fmt-a", "{json}");
    assert_eq!(json["ID"], &id[..12], "{json}");
    assert_eq!(json["State"], "exited", "{json}");
    assert_eq!(json["LocalVolumes"], "1", "{json}");
    assert!(json["Size"].as_str().unwrap().starts_with("10kB"), "{json}");
    assert_eq!(
        env.ok(&["ps", "-a", "--format", "json"]),
        env.ok(&["ps", "-a", "--format", "{{json .}}"])
    );

    // -q wins over --format, with Docker's warning.
    let o = env.out(&["ps", "-a", "-q", "--format", "{{.Names}}"]);
    assert!(o.status.success());
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        format!("{}\n", &id[..12])
    );
    assert_eq!(
        stderr(&o),
        "WARNING: Ignoring custom format, because both --format and --quiet are set.\n"
    );

    // An unknown field: Go's message naming it, exit 1 (Docker's), nothing listed.
    let o = env.out(&["ps", "-a", "--format", "{{.Names}} {{.Nope}}"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    assert_eq!(
        stderr(&o),
        "error: failed to execute template: template: :1:13: executing \"\" at <.Nope>: can't evaluate field Nope in type *formatter.ContainerContext\n"
    );

    // images: the same renderer with Docker's image fields.
    assert_eq!(
        env.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        format!("{IMAGE}\n")
    );
    let images = env.ok(&[
        "images",
        "--format",
        "table {{.Repository}}\\t{{.Tag}}\\t{{.Size}}",
    ]);
    assert!(
        images.starts_with("REPOSITORY   TAG         SIZE\nbusybox      kiln-test   "),
        "{images}"
    );
    let o = env.out(&["images", "--format", "{{.Names}}"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("can't evaluate field Names in type *formatter.ImageContext"));
}
