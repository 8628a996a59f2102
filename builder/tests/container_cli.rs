//! The container commands at the command line, as a user meets them: `ps --format`,
//! real terminals (`run -it`, `exec -it` under `script`), signals sent to a foreground
//! `kiln run`, `--pull` against a local registry, and the Debian tier. Root and
//! busybox-static (`require_root!`, `require_tool!`), over a busybox image built by kiln
//! in a store of the test's own.

use std::io::{BufRead, BufReader};
use std::process::{Command as Proc, Output, Stdio};
use std::time::Duration;

use kiln_test_support::registry::{Auth, Registry};
use kiln_test_support::{KilnStore, needs, repo_root, require_root, require_tool, wait};

const IMAGE: &str = kiln_test_support::BUSYBOX;

/// A store holding the busybox image.
fn store() -> KilnStore {
    KilnStore::new().with_busybox(IMAGE)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn ps_and_images_format_as_docker() {
    needs!("busybox");
    let env = store();
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

/// The path of the kiln binary under test, for shells that `script` runs.
fn kiln_bin() -> String {
    kiln_test_support::kiln_bin().display().to_string()
}

/// Runs `cmd` (a shell command line) under `script`, on a real pty of its own, with
/// `input` typed on its terminal; its exit status and what the terminal showed.
fn in_terminal(env: &KilnStore, cmd: &str, input: &str) -> (Option<i32>, String) {
    let mut child = Proc::new("script")
        .args(["-qfec", cmd, "/dev/null"])
        .env("KILN_ROOT", env.root())
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(input.as_bytes()).unwrap();
    }
    let o = child.wait_with_output().unwrap();
    let shown = String::from_utf8_lossy(&o.stdout).replace('\r', "");
    (o.status.code(), shown + &String::from_utf8_lossy(&o.stderr))
}

#[test]
fn run_it_on_a_real_terminal() {
    needs!("busybox");
    require_tool!("script");
    let env = store();
    let kiln = kiln_bin();
    // The container gets a terminal of its own, of the outer terminal's size; the
    // outer terminal's mode is the same after kiln exits.
    let (code, shown) = in_terminal(
        &env,
        &format!(
            "stty rows 40 cols 100; before=$(stty -g); \
             {kiln} run -it --rm {IMAGE} sh -c 'echo TTY=$(tty); echo SIZE=$(stty size)'; \
             rc=$?; after=$(stty -g); \
             [ \"$before\" = \"$after\" ] && echo MODE=restored || echo MODE=changed; exit $rc"
        ),
        "",
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("TTY=/dev/pts/0\n"), "{shown}");
    assert!(shown.contains("SIZE=40 100\n"), "{shown}");
    assert!(shown.contains("MODE=restored"), "{shown}");
    // What is typed reaches the container's shell; its exit code is kiln's.
    let (code, shown) = in_terminal(
        &env,
        &format!("{kiln} run -it --rm {IMAGE} sh"),
        "echo hi-$((40+2))\nexit 3\n",
    );
    assert_eq!(code, Some(3), "{shown}");
    assert!(shown.contains("hi-42"), "{shown}");
}

#[test]
fn exec_it_on_a_real_terminal() {
    needs!("busybox");
    require_tool!("script");
    let env = store();
    let kiln = kiln_bin();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "tty-x",
        IMAGE,
        "sh",
        "-c",
        "echo ready; exec sleep 1000",
    ]);
    let (code, shown) = in_terminal(
        &env,
        &format!(
            "stty rows 33 cols 77; before=$(stty -g); \
             {kiln} exec -it tty-x sh -c 'echo TTY=$(tty); echo SIZE=$(stty size)'; \
             rc=$?; after=$(stty -g); \
             [ \"$before\" = \"$after\" ] && echo MODE=restored || echo MODE=changed; exit $rc"
        ),
        "",
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("TTY=/dev/pts/"), "{shown}");
    assert!(shown.contains("SIZE=33 77\n"), "{shown}");
    assert!(shown.contains("MODE=restored"), "{shown}");
    let (code, shown) = in_terminal(
        &env,
        &format!("{kiln} exec -it tty-x sh"),
        "echo hi-$((40+2))\nexit 4\n",
    );
    assert_eq!(code, Some(4), "{shown}");
    assert!(shown.contains("hi-42"), "{shown}");
    env.ok(&["rm", "-f", "tty-x"]);
}

/// A foreground `kiln run` with its output piped: waits until it printed `ready`.
struct Foreground {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
    seen: String,
}

impl Foreground {
    fn start(env: &KilnStore, args: &[&str]) -> Foreground {
        let mut child = env
            .proc()
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut f = Foreground {
            child,
            out,
            seen: String::new(),
        };
        f.wait_line("ready");
        f
    }

    /// Reads output lines until one is `text` (the container's own readiness).
    fn wait_line(&mut self, text: &str) {
        loop {
            let mut line = String::new();
            let n = self.out.read_line(&mut line).unwrap();
            assert!(n > 0, "output ended before {text:?}: {}", self.seen);
            self.seen.push_str(&line);
            if line.trim_end() == text {
                return;
            }
        }
    }

    fn signal(&self, sig: &str) {
        let st = Proc::new("kill")
            .args(["-s", sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits for kiln's exit (20 s at most); its code and all its output.
    fn finish(mut self) -> (Option<i32>, String) {
        let mut child = self.child;
        let status = wait::until(
            Duration::from_secs(20),
            "kiln run to exit",
            || child.try_wait().unwrap(),
            || self.seen.clone(),
        );
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut self.out, &mut rest).unwrap();
        (status.code(), self.seen + &rest)
    }
}

#[test]
fn signals_to_a_foreground_run_reach_the_container() {
    needs!("busybox");
    let env = store();
    // SIGTERM goes to the container's pid 1, whose trap decides the exit code.
    let f = Foreground::start(
        &env,
        &[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.1; done",
        ],
    );
    f.signal("TERM");
    let (code, out) = f.finish();
    assert_eq!(code, Some(7), "{out}");
    assert!(out.contains("got TERM"), "{out}");

    // With --init, one SIGINT ends a command that has no handler: sleep dies by it.
    let f = Foreground::start(
        &env,
        &[
            "run",
            "--rm",
            "--init",
            IMAGE,
            "sh",
            "-c",
            "echo ready; exec sleep 100",
        ],
    );
    f.signal("INT");
    let (code, out) = f.finish();
    assert_eq!(code, Some(130), "{out}");

    // Without init, a pid 1 that handles SIGINT survives the first Ctrl-C; the second
    // one kills it (SIGKILL: 137).
    let mut f = Foreground::start(
        &env,
        &[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "trap 'echo got INT' INT; echo ready; while :; do sleep 0.1; done",
        ],
    );
    f.signal("INT");
    f.wait_line("got INT");
    assert_eq!(
        f.child.try_wait().unwrap(),
        None,
        "the first SIGINT ended it"
    );
    f.signal("INT");
    let (code, out) = f.finish();
    assert_eq!(code, Some(137), "{out}");
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "", "--rm removed them all");
}

#[test]
fn run_pull_policies_against_a_registry() {
    needs!("busybox");
    require_tool!("docker-registry");
    let reg = Registry::start(&Auth::None);
    let env = store();
    let name = format!("{}:1", reg.name("pull/busybox"));
    env.ok(&["tag", IMAGE, &name]);
    env.ok(&["push", &name]);

    let fresh = KilnStore::new();
    // never: a missing image is one line and 125, and nothing is pulled.
    let o = fresh.out(&["run", "--rm", "--pull", "never", &name, "true"]);
    assert_eq!(o.status.code(), Some(125));
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(&name), "{err}");
    assert_eq!(fresh.ok(&["images", "-q"]), "");
    // missing (the default): pulled, then listed.
    assert_eq!(
        fresh.ok(&["run", "--rm", &name, "echo", "pulled"]),
        "pulled\n"
    );
    assert_eq!(
        fresh.ok(&["images", "--format", "{{.Repository}}:{{.Tag}}"]),
        format!("{name}\n")
    );
    // Once: with the registry gone, missing and never run the store's copy...
    reg.kill();
    assert_eq!(
        fresh.ok(&["run", "--rm", "--pull", "missing", &name, "true"]),
        ""
    );
    assert_eq!(
        fresh.ok(&["run", "--rm", "--pull", "never", &name, "true"]),
        ""
    );
    // ...and always asks the registry (so fails without it: one line, 125).
    let o = fresh.out(&["run", "--rm", "--pull", "always", &name, "true"]);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert_eq!(stderr(&o).lines().count(), 1, "{}", stderr(&o));
    reg.restart();
    assert_eq!(
        fresh.ok(&["run", "--rm", "--pull", "always", &name, "echo", "again"]),
        "again\n"
    );
    assert_eq!(fresh.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn a_freshly_built_image_runs_with_no_load_step() {
    needs!("busybox");
    let env = store();
    let ctx = env.ws.context(
        "fresh",
        "FROM busybox:kiln-test\nRUN echo built > /built\nCMD [\"cat\", \"/built\"]\n",
    );
    env.kiln()
        .args(["build", "--progress", "quiet", "-t", "fresh-x"])
        .arg(&ctx)
        .assert()
        .success();
    assert_eq!(
        env.ok(&["run", "--rm", "--pull", "never", "fresh-x"]),
        "built\n"
    );
}

/// The Debian tier (`KILN_TEST_DEBIAN=1`, as e2e's): containers on a Debian base made
/// with mmdebstrap and imported by kiln.
#[test]
fn containers_on_the_debian_base() {
    kiln_test_support::require!(
        std::env::var_os("KILN_TEST_DEBIAN").is_some(),
        "the Debian tier runs with KILN_TEST_DEBIAN=1 (needs mmdebstrap and a Debian mirror; .ci/run sets it)"
    );
    require_root!();
    require_tool!("mmdebstrap");
    let env = KilnStore::new();
    let base = env.ws.path("debian");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::copy(
        repo_root().join("testdata/bases/debian/Dockerfile"),
        base.join("Dockerfile"),
    )
    .unwrap();
    kiln_test_support::run_ok(
        Proc::new("bash")
            .arg(repo_root().join("testdata/bases/debian/make-rootfs.sh"))
            .arg(base.join("rootfs.tar")),
    );
    env.kiln()
        .args(["build", "--progress", "quiet", "-t", "debian:kiln-test"])
        .arg(&base)
        .assert()
        .success();
    let deb = "debian:kiln-test";
    let version = env.ok(&["run", "--rm", deb, "cat", "/etc/debian_version"]);
    assert!(version.starts_with("12."), "{version}");
    assert_eq!(
        env.ok(&["run", "--rm", "-u", "nobody", deb, "id"]),
        "uid=65534(nobody) gid=65534(nogroup) groups=65534(nogroup)\n"
    );
    // A named volume mounted first on /etc/apt is filled from the image's /etc/apt; a
    // second container sees that content elsewhere.
    let in_image = env.ok(&["run", "--rm", deb, "ls", "-A", "/etc/apt"]);
    assert!(in_image.contains("sources.list"), "{in_image}");
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "apt:/etc/apt",
            deb,
            "ls",
            "-A",
            "/etc/apt"
        ]),
        in_image
    );
    assert_eq!(
        env.ok(&["run", "--rm", "-v", "apt:/copy", deb, "ls", "-A", "/copy"]),
        in_image
    );
    // A write shows in diff; the image is unchanged.
    env.ok(&[
        "run",
        "--name",
        "deb-w",
        deb,
        "sh",
        "-c",
        "echo x > /etc/kiln-test",
    ]);
    let diff = env.ok(&["diff", "deb-w"]);
    assert!(diff.lines().any(|l| l == "A /etc/kiln-test"), "{diff}");
    env.ok(&["rm", "deb-w"]);
    let o = env.out(&["run", "--rm", deb, "test", "-e", "/etc/kiln-test"]);
    assert_eq!(o.status.code(), Some(1));
}
