//! Containers for real (root, busybox-static): exit statuses, `--init`, signals, ptys,
//! exec, logs, the writable layer, and that nothing outlives a container.
//!
//! The runtime re-executes the running binary as its init process, exec helper and
//! monitor, so this test binary has its own `main` (`harness = false`) that answers
//! those hidden entry points first, then runs the tests one after the other (they fork
//! and handle signals: not something to do from libtest's threads). Filter by name as
//! with libtest: `cargo test -p kiln-sandbox --test containers exec`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use kiln_sandbox::container::{
    ContainerRuntime, ContainerSpec, ExecSpec, ExitRecord, Stdio, TtySize, forward_signals,
    is_alive,
};
use kiln_sandbox::{MountSpec, NetworkMode, RootSpec, Spec};
use kiln_test_support::repo_root;

const PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

static ROOTFS: OnceLock<PathBuf> = OnceLock::new();

/// The busybox tree every container's overlay has as its lower layer (made once).
fn rootfs() -> &'static Path {
    ROOTFS.get_or_init(|| {
        let dir = tempfile::Builder::new()
            .prefix("kiln-ctr-rootfs")
            .tempdir()
            .unwrap()
            .keep();
        let st = Command::new("bash")
            .arg(repo_root().join("testdata/bases/busybox/make-rootfs.sh"))
            .arg(&dir)
            .status()
            .unwrap();
        assert!(
            st.success(),
            "make-rootfs.sh failed (is busybox-static installed?)"
        );
        dir
    })
}

/// A container's directories: its writable layer (upper, work), mount point, log.
struct Ctr {
    dir: tempfile::TempDir,
}

impl Ctr {
    fn new() -> Ctr {
        let dir = tempfile::Builder::new()
            .prefix("kiln-ctr")
            .tempdir()
            .unwrap();
        for d in ["upper", "work", "merged", "scratch"] {
            fs::create_dir(dir.path().join(d)).unwrap();
        }
        Ctr { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn spec(&self, args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            sandbox: Spec {
                root: RootSpec::Overlay {
                    lowers: vec![rootfs().to_path_buf()],
                    upper: self.path("upper"),
                    work: self.path("work"),
                },
                merged: self.path("merged"),
                scratch: self.path("scratch"),
                args: args.iter().map(|s| s.to_string()).collect(),
                env: vec![PATH.into(), "HOME=/root".into()],
                cwd: "/".into(),
                uid: 0,
                gid: 0,
                groups: vec![0],
                network: NetworkMode::None,
                hostname: "ctr".into(),
                privileged: false,
                mounts: vec![],
                shm_size: None,
                host_files: vec![],
                stubs_file: self.path("stubs.json"),
                result_file: self.path("result.json"),
            },
            spec_file: self.path("spec.json"),
            init: false,
            stdio: Stdio {
                stdin: false,
                tty: None,
                attach: false,
                log: Some(self.path("ctr-json.log")),
            },
        }
    }

    /// Runs a container to its end: its exit status.
    fn run(&self, spec: &ContainerSpec) -> i32 {
        let mut c = runtime().start(spec).unwrap();
        c.wait().unwrap()
    }

    /// The log's entries: `(stream, log)`, each line checked to be Docker's json-file.
    fn log(&self, name: &str) -> Vec<(String, String)> {
        let text = fs::read_to_string(self.path(name)).unwrap_or_default();
        text.lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                let obj = v.as_object().unwrap();
                assert_eq!(obj.len(), 3, "{l}");
                let time = obj["time"].as_str().unwrap();
                assert!(time.ends_with('Z') && time.contains('T'), "{l}");
                (
                    obj["stream"].as_str().unwrap().to_string(),
                    obj["log"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    }

    fn output(&self, name: &str) -> String {
        self.log(name).into_iter().map(|(_, l)| l).collect()
    }
}

fn runtime() -> ContainerRuntime {
    ContainerRuntime::new().unwrap()
}

/// The host's mounts that name `dir` (a mount point or an overlay's upper dir in it).
/// Only those: other processes on the machine mount and unmount things meanwhile.
fn mounts_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy().into_owned();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(str::to_string)
        .collect()
}

fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn exec_spec(args: &[&str], log: PathBuf) -> ExecSpec {
    ExecSpec {
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![PATH.into()],
        cwd: "/".into(),
        uid: 0,
        gid: 0,
        groups: vec![0],
        privileged: false,
        stdio: Stdio {
            stdin: false,
            tty: None,
            attach: false,
            log: Some(log),
        },
    }
}

fn exit_statuses_are_dockers() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    assert_eq!(c.run(&c.spec(&["true"])), 0);
    assert_eq!(c.run(&c.spec(&["sh", "-c", "exit 3"])), 3);
    let err = runtime().start(&c.spec(&["nope", "x"])).unwrap_err();
    assert_eq!(err.exit_code(), 127);
    assert_eq!(
        err.to_string(),
        "exec: \"nope\": executable file not found in $PATH"
    );
    let err = runtime().start(&c.spec(&["/nope"])).unwrap_err();
    assert_eq!(
        (err.exit_code(), err.to_string().as_str()),
        (
            127,
            "exec: \"/nope\": stat /nope: no such file or directory"
        )
    );
    let err = runtime().start(&c.spec(&["/etc/passwd"])).unwrap_err();
    assert_eq!(
        (err.exit_code(), err.to_string().as_str()),
        (126, "exec: \"/etc/passwd\": permission denied")
    );
    assert_eq!(
        runtime().start(&c.spec(&["/etc"])).unwrap_err().exit_code(),
        126
    );
    // A bad spec: a bind mount of a missing host path; an empty command.
    let mut bad = c.spec(&["true"]);
    bad.sandbox.mounts.push(MountSpec::Bind {
        source: "/nonexistent/kiln".into(),
        target: "/mnt".into(),
        readonly: true,
    });
    let err = runtime().start(&bad).unwrap_err();
    assert_eq!(err.exit_code(), 125, "{err}");
    assert!(err.to_string().contains("/nonexistent/kiln"), "{err}");
    let err = runtime().start(&c.spec(&[])).unwrap_err();
    assert_eq!(err.exit_code(), 125, "{err}");
    // With --init, a missing command is the init's exit status, as with tini.
    let mut s = c.spec(&["nope"]);
    s.init = true;
    assert_eq!(c.run(&s), 127);
    assert_eq!(mounts_under(c.dir.path()), Vec::<String>::new());
}

fn output_goes_to_a_json_file_log() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let spec = c.spec(&["sh", "-c", "echo out; echo err >&2; printf partial"]);
    assert_eq!(c.run(&spec), 0);
    let mut log = c.log("ctr-json.log");
    log.sort();
    assert_eq!(
        log,
        [
            ("stderr".to_string(), "err\n".to_string()),
            ("stdout".to_string(), "out\n".to_string()),
            ("stdout".to_string(), "partial".to_string()),
        ]
    );
}

fn init_forwards_sigterm_and_reaps_orphans() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let mut spec = c.spec(&["sleep", "100"]);
    spec.init = true;
    let mut ctr = runtime().start(&spec).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(ctr.signal(libc::SIGTERM));
    assert_eq!(ctr.wait().unwrap(), 128 + libc::SIGTERM);

    // An orphan (its parent, the subshell, exits at once) is reparented to pid 1, which
    // must reap it when it ends: no zombie left.
    let c = Ctr::new();
    let mut spec = c.spec(&[
        "sh",
        "-c",
        "(sleep 0.2 &); sleep 1; cat /proc/[0-9]*/stat; echo done",
    ]);
    spec.init = true;
    assert_eq!(c.run(&spec), 0);
    let out = c.output("ctr-json.log");
    assert!(out.contains("done"), "{out}");
    assert!(!out.contains(") Z "), "a zombie is left:\n{out}");
}

fn pid_1_ignores_sigterm_without_init() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let mut ctr = runtime().start(&c.spec(&["sleep", "100"])).unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(ctr.signal(libc::SIGTERM));
    std::thread::sleep(Duration::from_millis(300));
    assert!(is_alive(ctr.pid(), ctr.start_time()), "sleep as pid 1 died");
    assert!(ctr.signal(libc::SIGKILL));
    assert_eq!(ctr.wait().unwrap(), 137);
    assert!(!is_alive(ctr.pid(), ctr.start_time()));
}

/// Sends `sig` to this process (whose forwarding handler passes it on).
fn raise(sig: i32) {
    let me = std::process::id() as i32;
    let t = kiln_sandbox::container::start_time(me).unwrap();
    assert!(kiln_sandbox::container::signal(me, t, sig));
}

fn foreground_signals_are_forwarded() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let mut spec = c.spec(&["sleep", "100"]);
    spec.init = true;
    let mut ctr = runtime().start(&spec).unwrap();
    let fwd = forward_signals(ctr.pid());
    std::thread::sleep(Duration::from_millis(200));
    raise(libc::SIGTERM);
    assert_eq!(ctr.wait().unwrap(), 143);
    drop(fwd);

    // Without an init, SIGINT does nothing to `sleep`; a second one kills it.
    let mut ctr = runtime().start(&c.spec(&["sleep", "100"])).unwrap();
    let _fwd = forward_signals(ctr.pid());
    std::thread::sleep(Duration::from_millis(200));
    raise(libc::SIGINT);
    std::thread::sleep(Duration::from_millis(200));
    assert!(is_alive(ctr.pid(), ctr.start_time()));
    raise(libc::SIGINT);
    assert_eq!(ctr.wait().unwrap(), 137);
}

fn a_tty_is_the_containers_own_pts() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let mut spec = c.spec(&["sh", "-c", "tty; stty size"]);
    spec.stdio.tty = Some(TtySize { rows: 33, cols: 77 });
    assert_eq!(c.run(&spec), 0);
    let out = c.output("ctr-json.log");
    assert_eq!(out, "/dev/pts/0\r\n33 77\r\n");
}

fn exec_joins_the_running_container() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let mut ctr = runtime()
        .start(&c.spec(&["sh", "-c", "echo by-pid-1 > /tmp/f; exec sleep 100"]))
        .unwrap();
    wait_until("pid 1 wrote /tmp/f", || c.path("upper/tmp/f").exists());
    let log = c.path("exec-json.log");
    let rt = runtime();
    let mut p = rt
        .exec(
            ctr.pid(),
            ctr.start_time(),
            &exec_spec(
                &[
                    "sh",
                    "-c",
                    "cat /proc/1/cmdline; echo; cat /tmp/f; hostname; echo $$",
                ],
                log,
            ),
        )
        .unwrap();
    assert_eq!(p.wait().unwrap(), 0);
    let out = c.output("exec-json.log");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "sleep\x00100\x00");
    assert_eq!(lines[1], "by-pid-1");
    assert_eq!(lines[2], "ctr");
    // Its own pid, in the container's pid namespace.
    assert!(lines[3].parse::<u32>().unwrap() < 10, "{out}");

    let (pid, t) = (ctr.pid(), ctr.start_time());
    let ex = |args: &[&str]| rt.exec(pid, t, &exec_spec(args, c.path("x.log")));
    assert_eq!(ex(&["sh", "-c", "exit 7"]).unwrap().wait().unwrap(), 7);
    let err = ex(&["nope"]).unwrap_err();
    assert_eq!(err.exit_code(), 127, "{err}");
    let mut tty = exec_spec(&["tty"], c.path("tty.log"));
    tty.stdio.tty = Some(TtySize { rows: 10, cols: 10 });
    let mut p = rt.exec(pid, t, &tty).unwrap();
    assert_eq!(p.wait().unwrap(), 0);
    assert_eq!(c.output("tty.log"), "/dev/pts/0\r\n");

    ctr.signal(libc::SIGKILL);
    assert_eq!(ctr.wait().unwrap(), 137);
    let err = ex(&["true"]).unwrap_err();
    assert_eq!(err.exit_code(), 125);
}

/// The pids of the processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect()
}

fn nothing_outlives_a_container() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let mut ctr = runtime()
        .start(&c.spec(&["sh", "-c", "sleep 100 & sleep 100 & wait"]))
        .unwrap();
    let mut kids = Vec::new();
    wait_until("pid 1 started two sleeps", || {
        kids = children(ctr.pid());
        kids.len() == 2
    });
    let kids: Vec<(i32, u64)> = kids
        .iter()
        .map(|&p| (p, kiln_sandbox::container::start_time(p).unwrap()))
        .collect();
    assert_eq!(
        mounts_under(c.dir.path()),
        Vec::<String>::new(),
        "a container's mount is visible on the host"
    );
    ctr.signal(libc::SIGKILL);
    assert_eq!(ctr.wait().unwrap(), 137);
    for (p, t) in kids {
        wait_until("the pid namespace is killed", || !is_alive(p, t));
    }
    assert_eq!(mounts_under(c.dir.path()), Vec::<String>::new());
}

/// Re-executed by `a_container_dies_with_its_owner`: starts a container, writes its pid
/// and start time, then waits to be killed.
fn hidden_start_and_hang(dir: &Path) -> ! {
    let c = Ctr {
        dir: tempfile::Builder::new().tempdir_in(dir).unwrap(),
    };
    for d in ["upper", "work", "merged", "scratch"] {
        fs::create_dir(c.path(d)).unwrap();
    }
    let ctr = runtime().start(&c.spec(&["sleep", "100"])).unwrap();
    fs::write(
        dir.join("pid.tmp"),
        format!("{} {}", ctr.pid(), ctr.start_time()),
    )
    .unwrap();
    fs::rename(dir.join("pid.tmp"), dir.join("pid")).unwrap();
    loop {
        std::thread::sleep(Duration::from_secs(60));
    }
}

fn a_container_dies_with_its_owner() {
    kiln_test_support::require_root!();
    let dir = tempfile::tempdir().unwrap();
    let mut owner = Command::new(std::env::current_exe().unwrap())
        .arg("--hidden-start-and-hang")
        .arg(dir.path())
        .arg(rootfs())
        .spawn()
        .unwrap();
    wait_until("the owner started its container", || {
        dir.path().join("pid").exists()
    });
    let s = fs::read_to_string(dir.path().join("pid")).unwrap();
    let (pid, t) = s.split_once(' ').unwrap();
    let (pid, t): (i32, u64) = (pid.parse().unwrap(), t.parse().unwrap());
    assert!(is_alive(pid, t));
    owner.kill().unwrap();
    owner.wait().unwrap();
    wait_until("the container dies with its owner", || !is_alive(pid, t));
    assert_eq!(mounts_under(dir.path()), Vec::<String>::new());
}

fn the_writable_layer_persists_across_starts() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    assert_eq!(
        c.run(&c.spec(&["sh", "-c", "echo kept > /data.txt; rm /bin/ls"])),
        0
    );
    assert!(c.path("upper/data.txt").is_file());
    let second = c.spec(&[
        "sh",
        "-c",
        "cat /data.txt; ls /bin/ls 2>/dev/null || echo no-ls",
    ]);
    assert_eq!(c.run(&second), 0);
    let out = c.output("ctr-json.log");
    assert!(out.starts_with("kept\n"), "{out}");
    assert!(out.contains("no-ls"), "{out}");
    // The image's tree is untouched.
    assert!(rootfs().join("bin/ls").exists());
}

fn a_detached_container_has_a_monitor() {
    kiln_test_support::require_root!();
    let c = Ctr::new();
    let spec = c.spec(&["sh", "-c", "echo detached; sleep 0.3; exit 4"]);
    let status = c.path("exit.json");
    let mut m = runtime().spawn_monitor(&spec, &status).unwrap();
    assert!(m.pid > 0);
    wait_until("the monitor records the exit", || status.exists());
    let rec: ExitRecord = serde_json::from_slice(&fs::read(&status).unwrap()).unwrap();
    assert_eq!(rec.exit_code, 4);
    assert_eq!(rec.error, None);
    assert_eq!(m.monitor.wait().unwrap().code(), Some(4));
    assert_eq!(c.output("ctr-json.log"), "detached\n");
    assert!(!is_alive(m.pid, m.start_time));

    let err = runtime()
        .spawn_monitor(&c.spec(&["nope"]), &status)
        .unwrap_err();
    assert_eq!(err.exit_code(), 127);
}

const TESTS: &[(&str, fn())] = &[
    ("exit_statuses_are_dockers", exit_statuses_are_dockers),
    (
        "output_goes_to_a_json_file_log",
        output_goes_to_a_json_file_log,
    ),
    (
        "init_forwards_sigterm_and_reaps_orphans",
        init_forwards_sigterm_and_reaps_orphans,
    ),
    (
        "pid_1_ignores_sigterm_without_init",
        pid_1_ignores_sigterm_without_init,
    ),
    (
        "foreground_signals_are_forwarded",
        foreground_signals_are_forwarded,
    ),
    (
        "a_tty_is_the_containers_own_pts",
        a_tty_is_the_containers_own_pts,
    ),
    (
        "exec_joins_the_running_container",
        exec_joins_the_running_container,
    ),
    ("nothing_outlives_a_container", nothing_outlives_a_container),
    (
        "a_container_dies_with_its_owner",
        a_container_dies_with_its_owner,
    ),
    (
        "the_writable_layer_persists_across_starts",
        the_writable_layer_persists_across_starts,
    ),
    (
        "a_detached_container_has_a_monitor",
        a_detached_container_has_a_monitor,
    ),
];

fn main() {
    if let Some(r) = kiln_sandbox::linux::hidden_main() {
        let code = r.unwrap_or_else(|e| {
            eprintln!("kiln sandbox: {e}");
            125
        });
        std::process::exit(code);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--hidden-start-and-hang") {
        let _ = ROOTFS.set(PathBuf::from(&args[2]));
        hidden_start_and_hang(Path::new(&args[1]));
    }
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in TESTS {
            println!("{name}: test");
        }
        return;
    }
    let mut failed = Vec::new();
    let mut ran = 0;
    for (name, test) in TESTS {
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        ran += 1;
        println!("test {name} ...");
        if std::panic::catch_unwind(test).is_err() {
            println!("test {name} ... FAILED");
            failed.push(*name);
        } else {
            println!("test {name} ... ok");
        }
    }
    if let Some(r) = ROOTFS.get() {
        let _ = fs::remove_dir_all(r);
    }
    println!(
        "\ntest result: {}. {} passed; {} failed",
        if failed.is_empty() { "ok" } else { "FAILED" },
        ran - failed.len(),
        failed.len()
    );
    if !failed.is_empty() {
        println!("failures: {failed:?}");
        std::process::exit(101);
    }
}
