//! `ADD` of git repositories end to end, against a `git daemon` on loopback: a ref by
//! branch, annotated and lightweight tag and commit, the default branch, a subdir,
//! `--keep-git-dir` on and off, `--checksum` match and mismatch; files owned 0:0 and
//! dated at the commit; the cache key is the commit (a moved branch is a miss, an
//! unchanged one a hit). Needs root (file owners) and git.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command as Std, Stdio};
use std::time::Duration;

use kiln_test_support::registry::free_port;
use kiln_test_support::ssh::{Agent, Sshd};
use kiln_test_support::{
    Built, KilnStore, kiln_bin, require_root, require_tool, run_ok, step_cached, wait,
};
use serde_json::Value;

/// A repository served by `git daemon` on a free loopback port.
struct Daemon {
    child: Child,
    url: String,
    log: PathBuf,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

kiln_test_support::store_env! {
    /// The test's store (build records on: a miss of a git source is explained by its
    /// commits; no agent but the one a test gives with --ssh: both are `KilnStore`'s
    /// defaults) and its repositories.
    struct Env;
}

/// Runs git in `dir` with fixed identities and dates (`when` seconds since the epoch).
fn git(dir: &Path, when: i64, args: &[&str]) -> String {
    let date = format!("@{when} +0000");
    run_ok(
        Std::new("git")
            .arg("-C")
            .arg(dir)
            .args(args)
            .env("GIT_AUTHOR_NAME", "t")
            .env("GIT_AUTHOR_EMAIL", "t@example.com")
            .env("GIT_COMMITTER_NAME", "t")
            .env("GIT_COMMITTER_EMAIL", "t@example.com")
            .env("GIT_AUTHOR_DATE", &date)
            .env("GIT_COMMITTER_DATE", &date)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("HOME", dir),
    )
    .trim()
    .to_string()
}

impl Env {
    fn new() -> Env {
        Env(KilnStore::new())
    }

    /// Builds `dockerfile` and exports its filesystem to a new directory.
    fn build_to(&self, name: &str, dockerfile: &str) -> (PathBuf, Value) {
        let ctx = self.ws.context(&format!("ctx-{name}"), dockerfile);
        self.ws
            .write(&format!("ctx-{name}/local.txt"), "from the context\n");
        let out = self.ws.path(&format!("out-{name}"));
        let dest = format!("type=local,dest={}", out.display());
        let Built {
            ok, stderr, report, ..
        } = self.build(&ctx, &["-o", &dest]);
        assert!(ok, "build {name} failed:\n{stderr}");
        (out, report)
    }

    /// The work repository: two commits on `main` (`v1` annotated and `light` on the
    /// first), served from a bare copy by `git daemon`.
    fn serve(&self) -> Daemon {
        self.init_repo();
        self.daemon()
    }

    /// The work repository (see [`Env::serve`]) and its bare copy `srv/repo.git`.
    fn init_repo(&self) {
        let work = self.ws.path("work");
        fs::create_dir_all(&work).unwrap();
        git(&work, 0, &["init", "-q", "-b", "main"]);
        self.ws.write("work/a.txt", "v1\n");
        self.ws.write("work/sub/b.txt", "b\n");
        self.ws.write("work/sub/deep/c.txt", "c\n");
        std::os::unix::fs::symlink("b.txt", work.join("sub/link")).unwrap();
        git(&work, 1_600_000_000, &["add", "-A"]);
        git(&work, 1_600_000_000, &["commit", "-q", "-m", "one"]);
        git(&work, 1_600_000_000, &["tag", "-a", "-m", "v1", "v1"]);
        git(&work, 1_600_000_000, &["tag", "light"]);
        self.ws.write("work/a.txt", "v2\n");
        git(&work, 1_650_000_000, &["commit", "-q", "-am", "two"]);
        let srv = self.ws.path("srv");
        fs::create_dir_all(&srv).unwrap();
        run_ok(
            Std::new("git")
                .args(["clone", "-q", "--bare"])
                .arg(&work)
                .arg(srv.join("repo.git")),
        );
    }

    /// `git daemon` serving `srv/`.
    fn daemon(&self) -> Daemon {
        let srv = self.ws.path("srv");
        let port = free_port();
        let log = self.ws.path("daemon.log");
        // git-daemon itself, not `git daemon`: the wrapper would leave it running
        // when the test kills what it started.
        let exec_path = run_ok(Std::new("git").arg("--exec-path"));
        let mut child = Std::new(Path::new(exec_path.trim()).join("git-daemon"))
            .args([
                "--reuseaddr",
                "--export-all",
                "--listen=127.0.0.1",
                &format!("--port={port}"),
                &format!("--base-path={}", srv.display()),
            ])
            .arg(&srv)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log).unwrap())
            .spawn()
            .expect("git daemon");
        let log_text = || fs::read_to_string(self.ws.path("daemon.log")).unwrap_or_default();
        wait::for_port(
            &mut child,
            port,
            Duration::from_secs(10),
            "git daemon",
            log_text,
        );
        Daemon {
            child,
            url: format!("git://127.0.0.1:{port}/repo.git"),
            log,
        }
    }

    /// Moves `main` of the served repository to a third commit.
    fn push_third_commit(&self) {
        let work = self.ws.path("work");
        self.ws.write("work/a.txt", "v3\n");
        git(&work, 1_700_000_000, &["commit", "-q", "-am", "three"]);
        let srv = self.ws.path("srv/repo.git");
        git(
            &work,
            1_700_000_000,
            &["push", "-q", srv.to_str().unwrap(), "main"],
        );
    }

    /// A repository `srv/NAME.git` with `files` and the submodules `subs` (path, URL,
    /// commit; gitlinks written directly, nothing is cloned), one commit on `main`; its
    /// commit id.
    fn repo(&self, name: &str, files: &[(&str, &str)], subs: &[(&str, &str, &str)]) -> String {
        let work = self.ws.path(&format!("work-{name}"));
        fs::create_dir_all(&work).unwrap();
        git(&work, 0, &["init", "-q", "-b", "main"]);
        for (path, body) in files {
            self.ws.write(&format!("work-{name}/{path}"), body);
        }
        let mut modules = String::new();
        for (path, url, _) in subs {
            modules.push_str(&format!(
                "[submodule \"{path}\"]\n\tpath = {path}\n\turl = {url}\n"
            ));
        }
        if !subs.is_empty() {
            self.ws.write(&format!("work-{name}/.gitmodules"), &modules);
        }
        git(&work, 1_600_000_000, &["add", "-A"]);
        // After `add -A`, which would drop gitlinks whose directory is missing.
        for (path, _, commit) in subs {
            git(
                &work,
                0,
                &[
                    "update-index",
                    "--add",
                    "--cacheinfo",
                    &format!("160000,{commit},{path}"),
                ],
            );
        }
        git(&work, 1_600_000_000, &["commit", "-q", "-m", name]);
        run_ok(
            Std::new("git")
                .args(["clone", "-q", "--bare"])
                .arg(&work)
                .arg(self.ws.path(&format!("srv/{name}.git"))),
        );
        git(&work, 0, &["rev-parse", "HEAD"])
    }

    fn rev(&self, what: &str) -> String {
        git(&self.ws.path("work"), 0, &["rev-parse", what])
    }
}

fn read(p: PathBuf) -> String {
    fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn add_git_refs_subdirs_and_git_dir() {
    require_root!();
    require_tool!("git");
    let env = Env::new();
    let d = env.serve();
    let url = &d.url;
    let one = env.rev("v1^{commit}");
    let two = env.rev("main");
    let df = format!(
        "FROM scratch\n\
         ADD {url}#v1 /tag/\n\
         ADD {url}#light /light\n\
         ADD {url}#main:sub /sub\n\
         ADD {url} /default\n\
         ADD {url}#{one} /commit\n\
         ADD --keep-git-dir {url}#main /kept\n\
         ADD --keep-git-dir=true {url}#main:sub/deep /deep\n\
         ADD --chown=7:8 {url}#v1:sub /owned\n"
    );
    let (out, report) = env.build_to("refs", &df);
    assert_eq!(read(out.join("tag/a.txt")), "v1\n");
    assert_eq!(read(out.join("light/a.txt")), "v1\n");
    assert_eq!(read(out.join("default/a.txt")), "v2\n");
    assert_eq!(read(out.join("commit/a.txt")), "v1\n");
    assert_eq!(read(out.join("kept/a.txt")), "v2\n");
    // A subdir: its contents, links kept as links.
    assert_eq!(read(out.join("sub/b.txt")), "b\n");
    assert_eq!(read(out.join("sub/deep/c.txt")), "c\n");
    assert!(!out.join("sub/a.txt").exists());
    assert_eq!(
        fs::read_link(out.join("sub/link")).unwrap(),
        Path::new("b.txt")
    );
    // `.git` only with --keep-git-dir and no subdir; a kept one is at the commit.
    assert!(!out.join("tag/.git").exists());
    assert!(!out.join("deep/.git").exists());
    assert_eq!(read(out.join("deep/c.txt")), "c\n");
    let head = run_ok(
        Std::new("git")
            .arg("--git-dir")
            .arg(out.join("kept/.git"))
            .args(["rev-parse", "HEAD"]),
    );
    assert_eq!(head.trim(), two);
    // Owned 0:0 (or --chown), dated at the commit.
    let m = fs::metadata(out.join("tag/a.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (0, 0));
    assert_eq!(m.mtime(), 1_600_000_000);
    assert_eq!(
        fs::metadata(out.join("kept/a.txt")).unwrap().mtime(),
        1_650_000_000
    );
    let m = fs::metadata(out.join("owned/b.txt")).unwrap();
    assert_eq!((m.uid(), m.gid()), (7, 8));
    assert!(!step_cached(&report, &format!("ADD {url}#v1 /tag/")));

    // Unchanged refs hit; a moved branch misses, and brings the new commit.
    let ctx = env.ws.path("ctx-refs");
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &[]);
    assert!(ok, "{stderr}");
    for step in [
        format!("ADD {url}#v1 /tag/"),
        format!("ADD {url}#main:sub /sub"),
    ] {
        assert!(step_cached(&report, &step), "{step}: {report}");
    }
    env.push_third_commit();
    let out = env.ws.path("out-again");
    let dest = format!("type=local,dest={}", out.display());
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &["-o", &dest]);
    assert!(ok, "{stderr}");
    assert!(
        step_cached(&report, &format!("ADD {url}#light /light")),
        "{report}"
    );
    assert!(
        !step_cached(&report, &format!("ADD {url}#main:sub /sub")),
        "{report}"
    );
    let three = env.rev("main");
    assert!(
        stderr.contains(&format!(
            "MISS: the git reference moved from {two} to {three}"
        )),
        "{stderr}"
    );
    assert_eq!(read(out.join("kept/a.txt")), "v3\n");
    assert_eq!(read(out.join("commit/a.txt")), "v1\n");
    drop(d);
}

#[test]
fn add_git_checksum_and_errors() {
    require_root!();
    require_tool!("git");
    let env = Env::new();
    let d = env.serve();
    let url = &d.url;
    let one = env.rev("v1^{commit}");
    let tag = env.rev("v1");
    assert_ne!(one, tag, "v1 is an annotated tag");
    // The commit (a prefix of it, any case) or the annotated tag object match.
    let ok_df = format!(
        "FROM scratch\n\
         ADD --checksum={} {url}#v1 /a\n\
         ADD --checksum={tag} {url}#v1 /b\n\
         ADD --checksum={one} {url}#main~0 /c\n",
        one[..12].to_ascii_uppercase()
    );
    let ctx = env.ws.context("ok", &ok_df);
    let Built { ok, stderr, .. } = env.build(&ctx, &[]);
    // `main~0` is no ref name: the error names the repository and the ref.
    assert!(!ok);
    assert!(
        stderr.contains(&format!("repository {url} does not contain ref main~0")),
        "{stderr}"
    );
    let ok_df = ok_df.replace("#main~0", "#v1");
    let (out, _) = env.build_to("ok", &ok_df);
    assert_eq!(read(out.join("a/a.txt")), "v1\n");
    // Another commit: refused before anything is fetched, naming both.
    let two = env.rev("main");
    let bad = format!("FROM scratch\nADD --checksum={two} {url}#v1 /a\n");
    let ctx = env.ws.context("bad", &bad);
    let Built { ok, stderr, .. } = env.build(&ctx, &[]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!(
            "expected checksum to match {two}, got {tag} or {one}"
        )),
        "{stderr}"
    );
    // A subdir that is not there, a repository that is not there.
    for (df, says) in [
        (
            format!("FROM scratch\nADD {url}#v1:nope /a\n"),
            "subdir \"nope\" is not a directory".to_string(),
        ),
        (
            format!(
                "FROM scratch\nADD {}/missing.git /a\n",
                url.trim_end_matches("/repo.git")
            ),
            "git ls-remote of".to_string(),
        ),
    ] {
        let ctx = env.ws.context("err", &df);
        let Built { ok, stderr, .. } = env.build(&ctx, &[]);
        assert!(!ok, "{df}");
        assert!(
            stderr.contains(&says),
            "{df}: {stderr}\n{}",
            read(d.log.clone())
        );
    }
}

#[test]
fn add_git_fetches_submodules_and_refuses_local_ones() {
    require_root!();
    require_tool!("git");
    let env = Env::new();
    let d = env.serve();
    let base = d.url.trim_end_matches("/repo.git").to_string();
    // super -> vendor/lib (../lib.git, relative to super's URL) -> deep (a full URL).
    let deep = env.repo("deep", &[("deep.txt", "deep\n")], &[]);
    let deep_url = format!("{base}/deep.git");
    let lib = env.repo(
        "lib",
        &[("lib.txt", "lib\n")],
        &[("deep", &deep_url, &deep)],
    );
    env.repo(
        "super",
        &[("top.txt", "top\n"), ("vendor/README", "vendored\n")],
        &[("vendor/lib", "../lib.git", &lib)],
    );
    let url = format!("{base}/super.git");
    let df = format!(
        "FROM scratch\n\
         ADD {url} /s\n\
         ADD {url}#main:vendor /v\n\
         ADD --keep-git-dir {url} /k\n"
    );
    let (out, _) = env.build_to("subs", &df);
    assert_eq!(read(out.join("s/top.txt")), "top\n");
    assert_eq!(read(out.join("s/vendor/lib/lib.txt")), "lib\n");
    assert_eq!(read(out.join("s/vendor/lib/deep/deep.txt")), "deep\n");
    // Without --keep-git-dir no `.git` is left, in the submodules either.
    assert!(!out.join("s/.git").exists());
    assert!(!out.join("s/vendor/lib/.git").exists());
    assert!(!out.join("s/vendor/lib/deep/.git").exists());
    // A subdir holding a submodule has its files.
    assert_eq!(read(out.join("v/lib/deep/deep.txt")), "deep\n");
    assert_eq!(read(out.join("v/README")), "vendored\n");
    let m = fs::metadata(out.join("s/vendor/lib/deep/deep.txt")).unwrap();
    assert_eq!((m.uid(), m.mtime()), (0, 1_600_000_000));
    // Kept: the submodule is a working checkout at its commit.
    let head = run_ok(
        Std::new("git")
            .arg("-C")
            .arg(out.join("k/vendor/lib"))
            .args(["rev-parse", "HEAD"]),
    );
    assert_eq!(head.trim(), lib);

    // A submodule pointing at the host's files: refused, naming it; nothing copied.
    env.ws.write("host-secret/secret.txt", "host only\n");
    let secret = env.ws.path("host-secret");
    git(&secret, 0, &["init", "-q", "-b", "main"]);
    git(&secret, 1, &["add", "-A"]);
    git(&secret, 1, &["commit", "-q", "-m", "s"]);
    let secret_commit = git(&secret, 0, &["rev-parse", "HEAD"]);
    for (name, sub_url) in [
        ("evil-path", secret.display().to_string()),
        ("evil-file", format!("file://{}", secret.display())),
    ] {
        env.repo(name, &[("x", "x\n")], &[("s", &sub_url, &secret_commit)]);
        let df = format!("FROM scratch\nADD {base}/{name}.git /e\n");
        let ctx = env.ws.context(&format!("ctx-{name}"), &df);
        let Built { ok, stderr, .. } = env.build(&ctx, &[]);
        assert!(!ok, "{name}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "submodule \"s\" has the local URL {sub_url:?}; a repository may not read the host's files"
            )),
            "{name}: {stderr}"
        );
    }
    // One level down (the check of the top level does not see it): git's own
    // `protocol.file.allow=user` refuses it.
    let inner = env.repo(
        "evil-inner",
        &[("y", "y\n")],
        &[("s", &secret.display().to_string(), &secret_commit)],
    );
    env.repo(
        "evil-outer",
        &[("z", "z\n")],
        &[("inner", "../evil-inner.git", &inner)],
    );
    let df = format!("FROM scratch\nADD {base}/evil-outer.git /e\n");
    let ctx = env.ws.context("ctx-evil-outer", &df);
    let Built { ok, stderr, .. } = env.build(&ctx, &[]);
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "git submodule update of {base}/evil-outer.git failed: fatal: transport 'file' not allowed"
        )),
        "{stderr}"
    );
    drop(d);
}

#[test]
fn add_git_over_ssh_with_the_agent() {
    require_root!();
    require_tool!("git");
    require_tool!("sshd");
    require_tool!("ssh-agent");
    require_tool!("ssh-add");
    require_tool!("ssh-keygen");
    let env = Env::new();
    env.init_repo();
    let agent = Agent::start(&env.ws, "agent", "kiln-git-key");
    let sshd = Sshd::start(&env.ws, "sshd", &[&agent.public_key]);
    // ssh://USER@HOST:PORT/PATH: the scp-like `git@host:path` form has no port.
    let url = format!(
        "ssh://root@127.0.0.1:{}{}",
        sshd.port,
        env.ws.path("srv/repo.git").display()
    );
    let df = format!(
        "FROM scratch\n\
         ADD {url}#v1 /tag/\n\
         ADD {url}#main:sub /sub\n\
         ADD --keep-git-dir {url} /kept\n"
    );
    let ctx = env.ws.context("ctx-ssh", &df);
    let out = env.ws.path("out-ssh");
    let dest = format!("type=local,dest={}", out.display());
    let sock = format!("default={}", agent.sock.display());
    let Built { ok, stderr, .. } = env.build(&ctx, &["--ssh", &sock, "-o", &dest]);
    assert!(ok, "{stderr}\n{}", sshd.log());
    assert_eq!(read(out.join("tag/a.txt")), "v1\n");
    assert_eq!(read(out.join("sub/b.txt")), "b\n");
    assert_eq!(read(out.join("kept/a.txt")), "v2\n");
    let origin = run_ok(
        Std::new("git")
            .arg("--git-dir")
            .arg(out.join("kept/.git"))
            .args(["remote", "get-url", "origin"]),
    );
    assert_eq!(origin.trim(), url);
    // The key came from the agent (sshd logs the accepted key's comment-free line).
    assert!(
        sshd.log().contains("Accepted publickey for root"),
        "{}",
        sshd.log()
    );
    // The unknown host key was accepted (BuildKit's StrictHostKeyChecking=no without
    // known hosts) but not remembered in the user's known_hosts.
    let known = fs::read_to_string("/root/.ssh/known_hosts").unwrap_or_default();
    assert!(
        !known.contains(&format!("[127.0.0.1]:{}", sshd.port)),
        "{known}"
    );

    // Without the agent (and none in the environment): one line naming the repository
    // and ssh's reason.
    let Built { ok, stderr, .. } = env.build(&ctx, &["--no-cache"]);
    assert!(!ok);
    assert!(
        stderr.contains(&format!("git ls-remote of {url} failed"))
            && stderr.contains("Permission denied (publickey)"),
        "{stderr}"
    );
    // An agent holding another key: refused the same way.
    let other = Agent::start(&env.ws, "other", "not-authorized");
    let sock = format!("default={}", other.sock.display());
    let Built { ok, stderr, .. } = env.build(&ctx, &["--no-cache", "--ssh", &sock]);
    assert!(!ok);
    assert!(stderr.contains("Permission denied (publickey)"), "{stderr}");
}

/// `ADD git@127.0.0.1:/path/repo.git#ref` (the scp-like form, which has no port), and
/// `--build-context NAME=git@127.0.0.1:/path/repo.git#ref`: sshd on
/// port 22 of a network namespace of its own, with a `git` user (uid 0) bind-mounted
/// into `/etc/passwd` of a mount namespace of its own; kiln runs inside both.
#[test]
fn add_git_scp_like_ssh_form() {
    require_root!();
    require_tool!("git");
    require_tool!("sshd");
    require_tool!("ssh-agent");
    require_tool!("ssh-add");
    require_tool!("ssh-keygen");
    require_tool!("ssh-keyscan");
    require_tool!("unshare");
    require_tool!("ip");
    let env = Env::new();
    env.init_repo();
    let agent = Agent::start(&env.ws, "agent", "kiln-git-key");
    let config = Sshd::config(&env.ws, "sshd", &[&agent.public_key], 22);
    let passwd = fs::read_to_string("/etc/passwd").unwrap();
    let passwd = env
        .ws
        .write("passwd", format!("{passwd}git:*:0:0:git:/root:/bin/sh\n"));
    let repo = env.ws.path("srv/repo.git");
    let df = format!(
        "FROM scratch\n\
         ADD git@127.0.0.1:{repo}#v1 /tag/\n\
         ADD git@127.0.0.1:{repo}#main:sub /sub\n\
         COPY --from=viassh a.txt /ctx-a.txt\n",
        repo = repo.display()
    );
    let ctx = env.ws.context("ctx-scp", &df);
    let out = env.ws.path("out-scp");
    let log = env.ws.path("sshd/sshd.log");
    let script = r#"set -e
ip link set lo up
mount --bind "$PASSWD" /etc/passwd
"$SSHD" -D -e -f "$CONFIG" 2>"$LOG" &
sshd=$!
trap 'kill $sshd' EXIT
n=0
until ssh-keyscan -T 1 -p 22 127.0.0.1 >/dev/null 2>&1; do
  n=$((n + 1))
  if [ $n -gt 100 ]; then echo "sshd did not start" >&2; cat "$LOG" >&2; exit 1; fi
  sleep 0.1
done
"$@"
"#;
    let kiln = kiln_bin();
    let output = Std::new("unshare")
        .args(["--net", "--mount", "--fork", "--", "sh", "-c", script, "sh"])
        .arg(&kiln)
        .args(["build", "--progress", "plain", "--ssh"])
        .arg(format!("default={}", agent.sock.display()))
        .arg("--build-context")
        .arg(format!("viassh=git@127.0.0.1:{}#v1", repo.display()))
        .arg("-o")
        .arg(format!("type=local,dest={}", out.display()))
        .arg(&ctx)
        .env("PASSWD", &passwd)
        .env("SSHD", kiln_test_support::tool_path("sshd"))
        .env("CONFIG", &config)
        .env("LOG", &log)
        .env("KILN_ROOT", env.root())
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .unwrap();
    let sshd_log = fs::read_to_string(&log).unwrap_or_default();
    assert!(
        output.status.success(),
        "{}\n{sshd_log}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(read(out.join("tag/a.txt")), "v1\n");
    assert_eq!(read(out.join("sub/b.txt")), "b\n");
    assert_eq!(read(out.join("ctx-a.txt")), "v1\n");
    assert!(
        sshd_log.contains("Accepted publickey for git"),
        "{sshd_log}"
    );
}

/// `--build-context NAME=<git repository>` (buildx): a ref and a subdir over `git://`,
/// a tag over dumb HTTP, used by `FROM`, `COPY --from` and in place of a stage; the
/// files are the checkout's (owned 0:0, dated at the commit, no `.git`), keyed by the
/// commit.
#[test]
fn build_contexts_from_git_repositories() {
    require_root!();
    require_tool!("git");
    require_tool!("python3");
    let env = Env::new();
    let d = env.serve();
    let url = &d.url;
    // The same repository over HTTP (git's dumb protocol: static files).
    run_ok(
        Std::new("git")
            .arg("--git-dir")
            .arg(env.ws.path("srv/repo.git"))
            .arg("update-server-info"),
    );
    let http = kiln_test_support::FileServer::start(&env.ws.path("srv"));
    let http_url = http.url("repo.git");
    let df = "FROM scratch AS sub\nCOPY does-not-exist /x\n\
              FROM tagged\n\
              COPY --from=sub . /sub/\n\
              COPY --from=overhttp a.txt /from-http.txt\n";
    let ctx = env.ws.context("ctx-named", df);
    let out = env.ws.path("out-named");
    let args = |out: &Path| -> Vec<String> {
        vec![
            "--build-context".into(),
            format!("tagged={url}#v1"),
            "--build-context".into(),
            format!("sub={url}#main:sub"),
            "--build-context".into(),
            format!("overhttp={http_url}#light"),
            "-o".into(),
            format!("type=local,dest={}", out.display()),
        ]
    };
    let a = args(&out);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &a);
    assert!(ok, "{stderr}\n{}", http.log());
    assert_eq!(read(out.join("a.txt")), "v1\n");
    assert_eq!(read(out.join("sub/b.txt")), "b\n");
    assert_eq!(read(out.join("sub/deep/c.txt")), "c\n");
    assert!(!out.join("sub/a.txt").exists() && !out.join(".git").exists());
    assert_eq!(read(out.join("from-http.txt")), "v1\n");
    let m = fs::metadata(out.join("a.txt")).unwrap();
    assert_eq!((m.uid(), m.mtime()), (0, 1_600_000_000));
    assert!(!step_cached(&report, "COPY --from=sub . /sub/"));
    // Same commits: hits. `main` moved: the step reading it misses, with the new files.
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &a);
    assert!(ok, "{stderr}");
    assert!(step_cached(&report, "COPY --from=sub . /sub/"), "{report}");
    env.ws.write("work/sub/b.txt", "b2\n");
    git(
        &env.ws.path("work"),
        1_700_000_000,
        &["commit", "-q", "-am", "b2"],
    );
    git(
        &env.ws.path("work"),
        0,
        &[
            "push",
            "-q",
            env.ws.path("srv/repo.git").to_str().unwrap(),
            "main",
        ],
    );
    let out2 = env.ws.path("out-named2");
    let a = args(&out2);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let Built {
        ok, stderr, report, ..
    } = env.build(&ctx, &a);
    assert!(ok, "{stderr}");
    assert!(!step_cached(&report, "COPY --from=sub . /sub/"), "{report}");
    assert_eq!(read(out2.join("sub/b.txt")), "b2\n");
    // A bad reference is one line naming the context's repository.
    let Built { ok, stderr, .. } = env.build(
        &ctx,
        &[
            "--build-context",
            &format!("tagged={url}#nope"),
            "--build-context",
            &format!("sub={url}"),
            "--build-context",
            &format!("overhttp={url}"),
        ],
    );
    assert!(!ok);
    assert!(
        stderr.contains(&format!("repository {url} does not contain ref nope")),
        "{stderr}"
    );
    drop(d);
}
