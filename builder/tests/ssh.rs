//! `kiln build --ssh` with `RUN --mount=type=ssh`, against a real `ssh-agent` holding a
//! fresh key: the agent is reachable at the default target and at a chosen one (with
//! the mount's owner and mode), `SSH_AUTH_SOCK` names it, a client speaking the agent
//! protocol (testdata/run/ssh/agent_list.c, built static) lists the key; an optional
//! agent that was not given is skipped, a required one fails the step; the agent is not
//! part of the cache key. Needs root, busybox-static, gcc and openssh-client.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command as Std;

use kiln_test_support::ssh::Agent;
use kiln_test_support::{
    BUSYBOX, Built, KilnStore, repo_root, require_root, require_tool, run_ok, step_cached,
};

kiln_test_support::store_env! {
    /// The test's store (no build records) and its agent client.
    struct Env;
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new().env("KILN_NO_RECORD", "1"))
    }

    /// The busybox base as `busybox:kiln-test`, and a context holding the agent client.
    fn setup(&self, dockerfile: &str) -> PathBuf {
        self.busybox(BUSYBOX);
        let ctx = self.ws.context("ctx", dockerfile);
        let cc = Std::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(ctx.join("agent_list"))
            .arg(repo_root().join("testdata/run/ssh/agent_list.c"))
            .status()
            .expect("gcc builds the agent client (apt-get install gcc libc6-dev)");
        assert!(cc.success(), "gcc -static failed (is libc6-dev installed?)");
        ctx
    }
}

const DEFAULT_RUN: &str = "RUN --mount=type=ssh test -S /run/buildkit/ssh_agent.0 && \
     test \"$SSH_AUTH_SOCK\" = /run/buildkit/ssh_agent.0 && /agent_list > /default.txt";
const APP_RUN: &str = "RUN --mount=type=ssh,id=work,target=/tmp/work.sock,uid=1000,mode=0600 \
     stat -c %u:%a /tmp/work.sock > /tmp/sock.txt && \
     echo $SSH_AUTH_SOCK >> /tmp/sock.txt && /agent_list >> /tmp/sock.txt";

#[test]
fn run_mount_ssh_forwards_the_agent() {
    require_root!();
    require_tool!("busybox");
    require_tool!("gcc");
    require_tool!("ssh-agent");
    require_tool!("ssh-add");
    require_tool!("ssh-keygen");
    let env = Env::new();
    let df = format!(
        "FROM busybox:kiln-test\nCOPY agent_list /agent_list\n{DEFAULT_RUN}\n\
         RUN --mount=type=ssh,id=absent test ! -e /run/buildkit/ssh_agent.0\n\
         USER app\n{APP_RUN}\n"
    );
    let ctx = env.setup(&df);
    let one = Agent::start(&env.ws, "one", "kiln-key-one");
    let two = Agent::start(&env.ws, "two", "kiln-key-two");
    let out = env.ws.path("out");
    let args = |default: &Path, out: &Path| -> Vec<String> {
        vec![
            "--ssh".into(),
            format!("default={}", default.display()),
            "--ssh".into(),
            format!("work={}", two.sock.display()),
            "-o".into(),
            format!("type=local,dest={}", out.display()),
        ]
    };
    let a = args(&one.sock, &out);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &a);
    assert!(ok, "{stderr}");
    assert_eq!(
        fs::read_to_string(out.join("default.txt")).unwrap(),
        "type=12 keys=1\nkiln-key-one\n"
    );
    // The chosen target, owned by the step's user with the mount's mode.
    assert_eq!(
        fs::read_to_string(out.join("tmp/sock.txt")).unwrap(),
        "1000:600\n/tmp/work.sock\ntype=12 keys=1\nkiln-key-two\n"
    );
    assert!(!out.join("run/buildkit").exists(), "no mount point left");
    assert!(!step_cached(&report, DEFAULT_RUN));

    // Another socket for the same ids: the agent is not in the cache key.
    let link = env.ws.path("elsewhere.sock");
    std::os::unix::fs::symlink(&two.sock, &link).unwrap();
    let a = args(&link, &env.ws.path("out2"));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &a);
    assert!(ok, "{stderr}");
    assert!(step_cached(&report, DEFAULT_RUN), "{report}");
    assert!(step_cached(&report, APP_RUN), "{report}");
    drop(one);
}

#[test]
fn required_ssh_agent_and_bad_flags() {
    require_root!();
    require_tool!("busybox");
    require_tool!("gcc");
    require_tool!("ssh-agent");
    require_tool!("ssh-add");
    require_tool!("ssh-keygen");
    let env = Env::new();
    let ctx = env.setup("FROM busybox:kiln-test\nRUN --mount=type=ssh,required=true true\n");
    let Built { ok, stderr, .. } = env.build(&ctx, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("no SSH agent \"default\" forwarded (kiln build --ssh default=SOCKET"),
        "{stderr}"
    );
    // `default` without SSH_AUTH_SOCK, a key file, a missing socket.
    let key = env.ws.write("id_ed25519", "not a socket");
    for (flag, says) in [
        (
            "default".to_string(),
            "SSH_AUTH_SOCK is not set".to_string(),
        ),
        (
            format!("default={}", key.display()),
            format!(
                "--ssh default: {} is not a usable private key",
                key.display()
            ),
        ),
        (
            "x=/nope.sock".to_string(),
            "/nope.sock: No such file".to_string(),
        ),
    ] {
        let Built { ok, stderr, .. } = env.build(&ctx, &["--ssh", &flag]);
        assert!(!ok, "{flag}");
        assert!(
            stderr.contains("--ssh") && stderr.contains(&says),
            "{flag}: {stderr}"
        );
    }
    // With SSH_AUTH_SOCK, `default` forwards it.
    let agent = Agent::start(&env.ws, "env", "kiln-env-key");
    let out = env
        .kiln()
        .env("SSH_AUTH_SOCK", &agent.sock)
        .args(["build", "--progress", "plain", "--ssh", "default"])
        .arg(&ctx)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether a process whose command line mentions `needle` is running.
fn process_mentions(needle: &str) -> bool {
    fs::read_dir("/proc").unwrap().flatten().any(|e| {
        fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(needle))
            .unwrap_or(false)
    })
}

/// `--ssh ID=KEYFILE[,KEYFILE]` (buildx's key files): kiln serves the keys through an
/// ssh-agent of its own for the build, which the step reaches like any forwarded
/// agent, and which is gone when the build ends. A key with a passphrase, a socket
/// among key files, and a file that is no key are refused, naming the file.
#[test]
fn ssh_key_files_are_served_by_an_agent_for_the_build() {
    require_root!();
    require_tool!("busybox");
    require_tool!("gcc");
    require_tool!("ssh-agent");
    require_tool!("ssh-add");
    require_tool!("ssh-keygen");
    let env = Env::new();
    let ctx = env.setup(
        "FROM busybox:kiln-test\nCOPY agent_list /agent_list\n\
         RUN --mount=type=ssh,id=deploy,required=true /agent_list > /keys.txt\n",
    );
    let key = |name: &str, passphrase: &str| -> PathBuf {
        let path = env.ws.path(name);
        run_ok(
            Std::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", passphrase, "-C"])
                .arg(format!("kiln-{name}"))
                .arg("-f")
                .arg(&path),
        );
        path
    };
    let one = key("one", "");
    let two = key("two", "");
    let out = env.ws.path("out");
    let Built { ok, stderr, .. } = env.build(
        &ctx,
        &[
            "--ssh",
            &format!("deploy={},{}", one.display(), two.display()),
            "-o",
            &format!("type=local,dest={}", out.display()),
        ],
    );
    assert!(ok, "{stderr}");
    assert_eq!(
        fs::read_to_string(out.join("keys.txt")).unwrap(),
        "type=12 keys=2\nkiln-one\nkiln-two\n"
    );
    // The agent went with the build: no process, no socket left in the store.
    let tmp = env.ws.path("store/tmp");
    assert!(
        !process_mentions(tmp.to_str().unwrap()),
        "a process of the build outlived it"
    );
    let left: Vec<_> = fs::read_dir(&tmp)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        !left
            .iter()
            .any(|n| n.to_string_lossy().starts_with("ssh-agent")),
        "{left:?}"
    );

    // A passphrase kiln cannot ask for; a socket that is not alone; a file that is no key.
    let locked = key("locked", "secret");
    let agent = Agent::start(&env.ws, "sock", "kiln-sock-key");
    let junk = env.ws.write("junk", "not a key");
    for (flag, says) in [
        (
            format!("deploy={}", locked.display()),
            format!(
                "--ssh deploy: {} is protected by a passphrase, which kiln cannot ask for",
                locked.display()
            ),
        ),
        (
            format!("deploy={},{}", one.display(), agent.sock.display()),
            format!(
                "{} is an agent socket, which must be the only path of an id",
                agent.sock.display()
            ),
        ),
        (
            format!("deploy={}", junk.display()),
            format!(
                "--ssh deploy: {} is not a usable private key",
                junk.display()
            ),
        ),
    ] {
        let Built { ok, stderr, .. } = env.build(&ctx, &["--ssh", &flag]);
        assert!(!ok, "{flag}");
        assert!(stderr.contains(&says), "{flag}: {stderr}");
    }
}
