//! Acceptance by the real Docker: a dockerd of the test's own (Debian's `docker.io`, on a
//! private socket, with its own data root, exec root and containerd namespace; no bridge,
//! no iptables, so containers run with `--network none`) loads kiln's docker-archive and
//! runs it, then pulls what kiln pushed to a local registry and runs that. One dockerd
//! serves every check; a guard stops it and removes its files whatever happens.
//! Root, busybox, docker-registry and dockerd (`require_*!`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Proc, Output, Stdio};
use std::time::Duration;

use assert_cmd::Command;
use kiln_test_support::registry::{Auth, Registry};
use kiln_test_support::{Workspace, busybox_context, require_root, require_tool, wait};

/// A dockerd of the test's own; stopped (and its directory removed) on drop.
struct Dockerd {
    child: Child,
    dir: tempfile::TempDir,
    client: PathBuf,
}

impl Dockerd {
    fn start(dockerd: &Path, client: PathBuf) -> Dockerd {
        // Under /var/tmp: overlay2 needs a filesystem that is not itself overlayfs, and
        // the sockets' paths must stay short.
        let dir = tempfile::Builder::new()
            .prefix("kiln-dockerd-")
            .tempdir_in("/var/tmp")
            .unwrap();
        let d = dir.path();
        let ns = format!("kiln-test-{}", std::process::id());
        let log = fs::File::create(d.join("dockerd.log")).unwrap();
        let child = Proc::new(dockerd)
            .arg("--iptables=false")
            .arg("--ip-masq=false")
            .arg("--bridge=none")
            .arg(format!("--data-root={}", d.join("data").display()))
            .arg(format!("--exec-root={}", d.join("exec").display()))
            .arg(format!("--pidfile={}", d.join("dockerd.pid").display()))
            .arg(format!("--host=unix://{}", d.join("docker.sock").display()))
            .arg(format!("--containerd-namespace={ns}"))
            .arg(format!("--containerd-plugins-namespace={ns}-plugins"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting dockerd");
        let mut daemon = Dockerd { child, dir, client };
        let log = daemon.dir.path().join("dockerd.log");
        wait::until(
            Duration::from_secs(60),
            "dockerd to answer on its socket",
            || {
                if let Ok(Some(status)) = daemon.child.try_wait() {
                    panic!(
                        "dockerd exited with {status}; its log:\n{}",
                        fs::read_to_string(&log).unwrap_or_default()
                    );
                }
                daemon.docker(&["version"]).status.success().then_some(())
            },
            || fs::read_to_string(&log).unwrap_or_default(),
        );
        daemon
    }

    /// Runs the docker client against this daemon.
    fn docker(&mut self, args: &[&str]) -> Output {
        Proc::new(&self.client)
            .arg("--host")
            .arg(format!(
                "unix://{}",
                self.dir.path().join("docker.sock").display()
            ))
            .args(args)
            .env("DOCKER_CONFIG", self.dir.path().join("client"))
            .output()
            .unwrap()
    }

    /// Runs the docker client, which must succeed; its stdout.
    fn ok(&mut self, args: &[&str]) -> String {
        let o = self.docker(args);
        assert!(
            o.status.success(),
            "docker {args:?} failed ({}):\n{}{}\ndockerd's log:\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            fs::read_to_string(self.dir.path().join("dockerd.log")).unwrap_or_default()
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        // SIGTERM: dockerd stops its containers and the containerd it started.
        let pid = rustix::process::Pid::from_child(&self.child);
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // Whatever it left mounted under its directory (overlay2 layers, netns files)
        // goes before the directory itself.
        let root = self.dir.path().to_string_lossy().into_owned();
        let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| m.starts_with(&root))
            .collect();
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            let _ = rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

fn kiln(ws: &Workspace) -> Command {
    let mut c = Command::cargo_bin("kiln").unwrap();
    c.env("KILN_ROOT", ws.path("store"))
        .env("KILN_NO_RECORD", "1");
    c
}

#[test]
fn docker_loads_and_pulls_what_kiln_builds() {
    require_root!();
    require_tool!("busybox");
    require_tool!("docker-registry");
    let dockerd = require_tool!("dockerd");
    // Debian's client (docker.io, matching its dockerd) where it is, else any on PATH.
    let client = match Path::new("/usr/bin/docker") {
        p if p.is_file() => p.to_path_buf(),
        _ => require_tool!("docker"),
    };

    let ws = Workspace::new();
    let base = ws.path("busybox");
    busybox_context(&base);
    kiln(&ws)
        .args(["build", "-q", "-t", "busybox:kiln-test"])
        .arg(&base)
        .assert()
        .success();
    let ctx = ws.context(
        "app",
        "FROM busybox:kiln-test\nRUN echo built-by-kiln > /msg\nCOPY hello.sh /hello.sh\n\
         ENV GREETING=hi\nCMD [\"sh\", \"/hello.sh\"]\n",
    );
    fs::write(ctx.join("hello.sh"), "echo \"$GREETING $(cat /msg)\"\n").unwrap();
    let archive = ws.path("app.tar");
    let id = kiln(&ws)
        .args(["build", "-q", "-t", "kiln-accept:1", "-o"])
        .arg(format!("type=docker,dest={}", archive.display()))
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        id.status.success(),
        "{}",
        String::from_utf8_lossy(&id.stderr)
    );
    let id = String::from_utf8(id.stdout).unwrap().trim().to_string();

    let mut docker = Dockerd::start(&dockerd, client);

    // 1. docker load of the docker-archive: the same image ID, and it runs.
    let loaded = docker.ok(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: kiln-accept:1"), "{loaded}");
    let docker_id = docker.ok(&["image", "inspect", "--format", "{{.Id}}", "kiln-accept:1"]);
    assert_eq!(docker_id.trim(), id, "docker's image ID is kiln's");
    let out = docker.ok(&["run", "--rm", "--network", "none", "kiln-accept:1"]);
    assert_eq!(out, "hi built-by-kiln\n");

    // 1b. `kiln save` of two images in one archive: docker loads both; and what
    // `docker save` writes, `kiln load` takes, into a fresh store, and runs.
    let two = ws.path("two.tar");
    kiln(&ws)
        .args([
            "save",
            "-o",
            two.to_str().unwrap(),
            "kiln-accept:1",
            "busybox:kiln-test",
        ])
        .assert()
        .success();
    docker.ok(&["rmi", "kiln-accept:1"]);
    let loaded = docker.ok(&["load", "-i", two.to_str().unwrap()]);
    assert!(loaded.contains("Loaded image: kiln-accept:1"), "{loaded}");
    assert!(
        loaded.contains("Loaded image: busybox:kiln-test"),
        "{loaded}"
    );
    let saved = ws.path("docker-saved.tar");
    docker.ok(&["save", "-o", saved.to_str().unwrap(), "kiln-accept:1"]);
    let fresh = ws.path("fresh-store");
    let out = kiln(&ws)
        .env("KILN_ROOT", &fresh)
        .args(["load", "-i", saved.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "Loaded image: kiln-accept:1\n"
    );
    let out = kiln(&ws)
        .env("KILN_ROOT", &fresh)
        .args(["run", "--rm", "--pull", "never", "kiln-accept:1"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hi built-by-kiln\n");

    // 2. kiln push to a registry, docker pull and run: as OCI and as Docker schema 2.
    // The loaded image goes first, and each pulled one after its run, so that every pull
    // downloads.
    docker.ok(&["rmi", "kiln-accept:1"]);
    let reg = Registry::start(&Auth::None);
    for (media_types, tag) in [("oci", "oci"), ("docker", "schema2")] {
        let name = reg.name(&format!("kiln/accept:{tag}"));
        kiln(&ws)
            .args(["tag", "kiln-accept:1", &name])
            .assert()
            .success();
        kiln(&ws)
            .args(["push", "-q", "--media-types", media_types, &name])
            .assert()
            .success();
        let pulled = docker.ok(&["pull", &name]);
        assert!(pulled.contains("Downloaded newer image"), "{pulled}");
        let out = docker.ok(&["run", "--rm", "--network", "none", &name]);
        assert_eq!(out, "hi built-by-kiln\n", "{name}");
        let pulled_id = docker.ok(&["image", "inspect", "--format", "{{.Id}}", &name]);
        assert_eq!(pulled_id.trim(), id, "{name}");
        docker.ok(&["rmi", &name]);
    }
}
