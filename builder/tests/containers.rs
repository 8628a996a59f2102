//! Containers for real: `kiln run` and the lifecycle commands over a busybox image built
//! by kiln itself, in a store of the test's own. They need root (namespaces, overlayfs)
//! and busybox-static (`require_root!`, `require_tool!`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use kiln_test_support::{KilnStore, needs, wait};

const IMAGE: &str = kiln_test_support::BUSYBOX;

kiln_test_support::store_env! {
    /// A workspace with a store holding the busybox image.
    struct Env;
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new().with_busybox(IMAGE))
    }

    /// Runs kiln with `args`, which must succeed; its stdout, trimmed (unlike
    /// [`KilnStore::ok`]'s).
    fn ok(&self, args: &[&str]) -> String {
        self.0.ok(args).trim().to_string()
    }

    fn containers_dir(&self) -> PathBuf {
        self.root().join("containers")
    }

    /// Ids of the containers in the store.
    fn container_ids(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.containers_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.len() == 64)
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    fn inspect(&self, name: &str) -> serde_json::Value {
        let v: serde_json::Value = serde_json::from_str(&self.ok(&["inspect", name])).unwrap();
        v[0].clone()
    }

    fn image_id(&self) -> String {
        self.inspect(IMAGE)["Id"].as_str().unwrap().to_string()
    }

    /// Mounts of the host that are under the store.
    fn mounts_under_store(&self) -> Vec<String> {
        let root = self.root().display().to_string();
        fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| l.contains(&root))
            .map(str::to_string)
            .collect()
    }

    /// Processes of a container of the store: those whose mount namespace has a mount
    /// from the store (the container's overlay, over snapshots and its upper dir).
    fn processes_in_store(&self) -> Vec<String> {
        let root = self.root().display().to_string();
        fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
            .filter(|e| {
                fs::read_to_string(e.path().join("mountinfo")).is_ok_and(|m| m.contains(&root))
            })
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    /// Waits until container `name`'s log holds `text`.
    fn wait_log(&self, name: &str, text: &str) {
        wait::until(
            Duration::from_secs(20),
            &format!("{name}'s log to hold {text:?}"),
            || self.ok(&["logs", name]).contains(text).then_some(()),
            || self.ok(&["logs", name]),
        );
    }
}

/// Apparent bytes of the regular files under `dir` (hard links once).
fn tree_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut seen = std::collections::HashSet::new();
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let Ok(m) = fs::symlink_metadata(e.path()) else {
                continue;
            };
            if m.is_dir() {
                todo.push(e.path());
            } else if m.is_file() && seen.insert((m.dev(), m.ino())) {
                total += m.len();
            }
        }
    }
    total
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn a_file_written_in_a_container_is_in_its_upper_dir_and_gone_after_rm() {
    needs!("busybox");
    let env = Env::new();
    let before = env.image_id();
    env.ok(&[
        "run",
        "--name",
        "writer",
        IMAGE,
        "sh",
        "-c",
        "echo hello > /written && rm /bin/true",
    ]);
    let c = env.inspect("writer");
    let upper = PathBuf::from(c["GraphDriver"]["Data"]["UpperDir"].as_str().unwrap());
    assert_eq!(
        fs::read_to_string(upper.join("written")).unwrap(),
        "hello\n"
    );
    assert_eq!(c["State"]["Status"], "exited");
    assert_eq!(c["State"]["ExitCode"], 0);
    // The image is unchanged: same id, and a new container sees none of it.
    assert_eq!(env.image_id(), before);
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            IMAGE,
            "sh",
            "-c",
            "ls /written; ls /bin/true"
        ]),
        "/bin/true"
    );
    // Restarted, the container sees its own writes: /bin/true is gone already.
    let o = env.out(&["start", "-a", "writer"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("can't remove '/bin/true'"),
        "{}",
        stderr(&o)
    );
    env.ok(&["rm", "writer"]);
    assert!(!upper.exists());
    assert!(env.container_ids().is_empty());
    assert_eq!(env.image_id(), before);
}

#[test]
fn exit_codes_are_dockers() {
    needs!("busybox");
    let env = Env::new();
    let code = |args: &[&str]| env.out(args).status.code();
    assert_eq!(code(&["run", "--rm", IMAGE, "true"]), Some(0));
    assert_eq!(code(&["run", "--rm", IMAGE, "sh", "-c", "exit 3"]), Some(3));
    assert_eq!(
        code(&["run", "--rm", "--pull", "never", "nope:1", "true"]),
        Some(125)
    );
    assert_eq!(code(&["run", "--rm", IMAGE, "/etc/passwd"]), Some(126));
    assert_eq!(code(&["run", "--rm", IMAGE, "no-such-command"]), Some(127));
    assert!(
        env.container_ids().is_empty(),
        "--rm removes failed ones too"
    );
}

#[test]
fn rm_flag_leaves_no_container_mount_or_process() {
    needs!("busybox");
    let env = Env::new();
    let out = env.ok(&["run", "--rm", IMAGE, "sh", "-c", "echo hi > /f; cat /f"]);
    assert_eq!(out, "hi");
    assert!(env.container_ids().is_empty());
    assert_eq!(env.mounts_under_store(), Vec::<String>::new());
    assert_eq!(env.processes_in_store(), Vec::<String>::new());
    assert_eq!(env.ok(&["ps", "-a", "-q"]), "");
}

#[test]
fn detached_stop_ends_with_the_images_stop_signal() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.ws.context(
        "stopper",
        "FROM busybox:kiln-test\nSTOPSIGNAL SIGUSR1\n\
         CMD [\"sh\", \"-c\", \"trap 'echo got USR1; exit 7' USR1; trap 'echo got TERM; exit 9' TERM; echo ready; while true; do sleep 0.05; done\"]\n",
    );
    env.kiln()
        .args(["build", "--progress", "quiet", "-t", "stopper"])
        .arg(&ctx)
        .assert()
        .success();
    let id = env.ok(&["run", "-d", "--name", "st", "stopper"]);
    assert_eq!(id.len(), 64, "{id}");
    env.wait_log("st", "ready");
    assert!(env.ok(&["ps"]).contains("Up "));
    let started = std::time::Instant::now();
    assert_eq!(env.ok(&["stop", "-t", "20", "st"]), "st");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "not killed by the timeout"
    );
    let c = env.inspect("st");
    assert_eq!(c["State"]["Status"], "exited", "{c}");
    assert_eq!(c["State"]["ExitCode"], 7, "{c}");
    assert!(env.ok(&["logs", "st"]).contains("got USR1"));
    assert!(env.ok(&["ps", "-a"]).contains("Exited (7)"));
    env.ok(&["rm", "st"]);
    assert_eq!(env.processes_in_store(), Vec::<String>::new());
}

#[test]
fn detached_logs_exec_kill_and_rm_force() {
    needs!("busybox");
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--name",
        "bg",
        IMAGE,
        "sh",
        "-c",
        "echo out; echo err >&2; echo pid1 > /tmp/mark; exec sleep 1000",
    ]);
    env.wait_log("bg", "out");
    let o = env.out(&["logs", "bg"]);
    assert_eq!(String::from_utf8_lossy(&o.stdout), "out\n");
    assert_eq!(stderr(&o), "err\n");
    // exec joins the container: it sees pid 1's files, and its pid namespace.
    assert_eq!(env.ok(&["exec", "bg", "cat", "/tmp/mark"]), "pid1");
    assert_eq!(env.ok(&["exec", "bg", "cat", "/proc/1/comm"]), "sleep");
    assert_eq!(env.ok(&["exec", "-u", "1:2", "bg", "id", "-u"]), "1");
    assert_eq!(
        env.ok(&[
            "exec",
            "-e",
            "X=1",
            "-w",
            "/tmp",
            "bg",
            "sh",
            "-c",
            "echo $X $PWD"
        ]),
        "1 /tmp"
    );
    assert_eq!(
        env.out(&["exec", "bg", "sh", "-c", "exit 4"]).status.code(),
        Some(4)
    );
    // rm refuses a running container, as Docker.
    let o = env.out(&["rm", "bg"]);
    assert_eq!(o.status.code(), Some(125));
    assert!(
        stderr(&o).contains("container is running"),
        "{}",
        stderr(&o)
    );
    env.ok(&["kill", "-s", "TERM", "bg"]);
    // sleep as pid 1 has no handler for TERM: it lives on (Docker's rule for pid 1).
    assert!(env.ok(&["ps", "-q"]).len() == 12);
    env.ok(&["rm", "-f", "bg"]);
    assert!(env.container_ids().is_empty());
    assert_eq!(env.processes_in_store(), Vec::<String>::new());
    assert_eq!(env.mounts_under_store(), Vec::<String>::new());
}

#[test]
fn detached_rm_flag_removes_the_container_when_it_ends() {
    needs!("busybox");
    let env = Env::new();
    env.ok(&[
        "run",
        "-d",
        "--rm",
        "-v",
        "/anon",
        IMAGE,
        "sh",
        "-c",
        "sleep 0.2",
    ]);
    wait::until(
        Duration::from_secs(20),
        "the --rm container and its anonymous volume to be removed",
        || {
            (env.container_ids().is_empty() && env.ok(&["volume", "ls", "-q"]).is_empty())
                .then_some(())
        },
        || {
            format!(
                "{:?} {}",
                env.container_ids(),
                env.ok(&["volume", "ls", "-q"])
            )
        },
    );
}

#[test]
fn kill_9_of_a_foreground_run_leaves_no_mount_or_process() {
    needs!("busybox");
    let env = Env::new();
    let mut child = env
        .proc()
        .args(["run", "--name", "fg", IMAGE, "sleep", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait::until(
        Duration::from_secs(20),
        "the container to run",
        || (!env.ok(&["ps", "-q"]).is_empty()).then_some(()),
        || env.ok(&["ps", "-a"]),
    );
    assert!(
        !env.processes_in_store().is_empty(),
        "the check sees a running container"
    );
    child.kill().unwrap();
    child.wait().unwrap();
    // A pid 1 that is still tearing down its namespaces (the overlay's unmount runs in
    // its exit path) has no mountinfo left but is not yet a zombie: until it is, it is
    // the container's pid and the container is running. So the wait is for its state too.
    wait::until(
        Duration::from_secs(20),
        "the container's processes and mounts to go",
        || {
            (env.processes_in_store().is_empty()
                && env.mounts_under_store().is_empty()
                && env.inspect("fg")["State"]["Status"] != "running")
                .then_some(())
        },
        || {
            format!(
                "{:?} {:?} {}",
                env.processes_in_store(),
                env.mounts_under_store(),
                env.inspect("fg")["State"]
            )
        },
    );
    let c = env.inspect("fg");
    let status = c["State"]["Status"].as_str().unwrap();
    assert!(status == "exited" || status == "dead", "{c}");
    let ps = env.ok(&["ps", "-a"]);
    assert!(ps.contains("Exited") || ps.contains("Dead"), "{ps}");
    env.ok(&["rm", "fg"]);
    assert!(env.container_ids().is_empty());
}

#[test]
fn two_containers_share_the_image_layers() {
    needs!("busybox");
    let env = Env::new();
    // The first run unpacks the image's layers into snapshots/, once for every container.
    env.ok(&["run", "--rm", IMAGE, "true"]);
    let snapshots = tree_bytes(&env.root().join("snapshots"));
    let before = tree_bytes(&env.root());
    let write = "dd if=/dev/zero of=/blob bs=1024 count=1024 2>/dev/null";
    env.ok(&["run", "--name", "c1", IMAGE, "sh", "-c", write]);
    env.ok(&["run", "--name", "c2", IMAGE, "sh", "-c", write]);
    let grown = tree_bytes(&env.root()) - before;
    let uppers: u64 = env
        .container_ids()
        .iter()
        .map(|id| tree_bytes(&env.containers_dir().join(id).join("upper")))
        .sum();
    assert!(uppers >= 2 << 20, "{uppers}");
    // Besides the writable layers: configs, states, logs (a few KiB).
    assert!(
        grown - uppers < 64 << 10,
        "grown {grown}, upper dirs {uppers}"
    );
    assert_eq!(tree_bytes(&env.root().join("snapshots")), snapshots);
}

#[test]
fn bind_mounts_write_to_the_host_and_ro_refuses() {
    needs!("busybox");
    let env = Env::new();
    let host = env.ws.path("host-data");
    let v = format!("{}:/data", host.display());
    env.ok(&[
        "run",
        "--rm",
        "-v",
        &v,
        IMAGE,
        "sh",
        "-c",
        "echo from-ctr > /data/f",
    ]);
    assert_eq!(fs::read_to_string(host.join("f")).unwrap(), "from-ctr\n");
    let ro = format!("{}:/data:ro", host.display());
    let o = env.out(&[
        "run",
        "--rm",
        "-v",
        &ro,
        IMAGE,
        "sh",
        "-c",
        "echo x > /data/g",
    ]);
    assert_ne!(o.status.code(), Some(0));
    assert!(!host.join("g").exists());
    let m = format!("type=bind,source={},target=/m,readonly", host.display());
    assert_eq!(
        env.ok(&["run", "--rm", "--mount", &m, IMAGE, "cat", "/m/f"]),
        "from-ctr"
    );
    let t = "type=tmpfs,target=/scratch";
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "--mount",
            t,
            IMAGE,
            "sh",
            "-c",
            "echo t > /scratch/x; cat /scratch/x"
        ]),
        "t"
    );
}

#[test]
fn run_flags_apply_as_docker() {
    needs!("busybox");
    let env = Env::new();
    let envfile = env
        .ws
        .write("env.list", "# comment\nFROM_FILE=1\n\nB=file\n");
    let out = env.ok(&[
        "run",
        "--rm",
        "-e",
        "A=1",
        "--env-file",
        envfile.to_str().unwrap(),
        "-e",
        "B=flag",
        "-w",
        "/made/here",
        "-u",
        "1:1",
        "--hostname",
        "box",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "echo $A $FROM_FILE $B $PWD $(id -u) $(hostname) $(cat /etc/hostname); ls /sys/class/net",
    ]);
    assert_eq!(out, "1 1 flag /made/here 1 box box\nlo");
    assert_eq!(
        env.ok(&["run", "--rm", "--entrypoint", "echo", IMAGE, "a", "b"]),
        "a b"
    );
    // --init: pid 1 is kiln's init, the command its child.
    assert_eq!(
        env.ok(&["run", "--rm", "--init", IMAGE, "sh", "-c", "echo $$"]),
        "2"
    );
}

#[test]
fn bad_input_is_one_line_and_125() {
    needs!("busybox");
    let env = Env::new();
    env.ok(&["run", "--name", "taken", IMAGE, "true"]);
    let ids = env.container_ids();
    let missing = env.ws.path("no-such-dir");
    let mount = format!("type=bind,source={},target=/x", missing.display());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["rm", "nope"], "error: No such container: nope"),
        (vec!["stop", "nope"], "error: No such container: nope"),
        (vec!["logs", "nope"], "error: No such container: nope"),
        (
            vec!["exec", "nope", "true"],
            "error: No such container: nope",
        ),
        (
            vec!["run", "--name", "taken", IMAGE, "true"],
            "error: Conflict. The container name \"/taken\" is already in use by container",
        ),
        (
            vec!["run", "--mount", &mount, IMAGE, "true"],
            "error: invalid mount config for type \"bind\": bind source path does not exist:",
        ),
        (
            vec!["run", "-u", "nobody-here", IMAGE, "true"],
            "error: unable to find user nobody-here",
        ),
        (
            vec!["run", "--pull", "never", "missing:1", "true"],
            "error: Unable to find image 'missing:1'",
        ),
    ];
    for (args, want) in cases {
        let o = env.out(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(125), "{args:?}: {err}");
        assert!(err.starts_with(want), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
    }
    assert_eq!(env.container_ids(), ids, "nothing left behind");
    assert!(!missing.exists());
}

#[test]
fn named_volumes_outlive_containers_and_rm_flag_removes_anonymous_ones() {
    needs!("busybox");
    let env = Env::new();
    env.ok(&[
        "run",
        "--name",
        "w1",
        "-v",
        "data:/data",
        IMAGE,
        "sh",
        "-c",
        "echo kept > /data/f",
    ]);
    env.ok(&["rm", "-v", "w1"]);
    assert_eq!(
        env.ok(&["volume", "ls", "-q"]),
        "data",
        "named volumes survive rm -v"
    );
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "--mount",
            "type=volume,source=data,target=/d",
            IMAGE,
            "cat",
            "/d/f"
        ]),
        "kept"
    );
    // --rm removes the anonymous volumes only.
    env.ok(&[
        "run",
        "--rm",
        "-v",
        "/anon",
        "-v",
        "data:/data",
        IMAGE,
        "sh",
        "-c",
        "echo x > /anon/f",
    ]);
    assert_eq!(env.ok(&["volume", "ls", "-q"]), "data");
    // Without -v, rm keeps them (as Docker); with -v they go.
    env.ok(&["run", "--name", "a1", "-v", "/anon", IMAGE, "true"]);
    let anon = env.inspect("a1")["Mounts"][0]["Name"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(anon.len(), 64);
    env.ok(&["rm", "a1"]);
    assert!(env.ok(&["volume", "ls", "-q"]).contains(&anon));
    env.ok(&["run", "--name", "a2", "-v", "/anon", IMAGE, "true"]);
    let anon2 = env.inspect("a2")["Mounts"][0]["Name"]
        .as_str()
        .unwrap()
        .to_string();
    env.ok(&["rm", "-v", "a2"]);
    assert!(!env.ok(&["volume", "ls", "-q"]).contains(&anon2));
}

#[test]
fn the_images_volumes_are_anonymous_volumes_filled_from_the_image() {
    needs!("busybox");
    let env = Env::new();
    let ctx = env.ws.context(
        "withvol",
        "FROM busybox:kiln-test\nRUN mkdir -p /var/app && echo seed > /var/app/seed\nVOLUME /var/app\n",
    );
    env.kiln()
        .args(["build", "--progress", "quiet", "-t", "withvol"])
        .arg(&ctx)
        .assert()
        .success();
    env.ok(&[
        "run",
        "--name",
        "v1",
        "withvol",
        "sh",
        "-c",
        "echo new > /var/app/new",
    ]);
    let c = env.inspect("v1");
    let upper = PathBuf::from(c["GraphDriver"]["Data"]["UpperDir"].as_str().unwrap());
    assert!(
        !upper.join("var/app/new").exists(),
        "written to the volume, not the layer"
    );
    let name = c["Mounts"][0]["Name"].as_str().unwrap().to_string();
    let data = env.root().join("volumes").join(&name).join("_data");
    assert_eq!(fs::read_to_string(data.join("seed")).unwrap(), "seed\n");
    assert_eq!(fs::read_to_string(data.join("new")).unwrap(), "new\n");
    // A named volume is filled from the image once.
    env.ok(&[
        "run",
        "--rm",
        "-v",
        "filled:/var/app",
        "withvol",
        "rm",
        "/var/app/seed",
    ]);
    assert_eq!(
        env.ok(&[
            "run",
            "--rm",
            "-v",
            "filled:/var/app",
            "withvol",
            "ls",
            "/var/app"
        ]),
        ""
    );
    env.ok(&["rm", "-v", "v1"]);
    assert!(!data.exists());
}
