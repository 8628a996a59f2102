//! Git sources (`ADD https://host/repo.git#ref:subdir`), with the `git` binary, as
//! BuildKit's `source/git` does it:
//!
//! - **Resolve**: a reference becomes a commit with `git ls-remote` (a full commit id
//!   needs no lookup). The commit is the source's cache key (with the subdir and
//!   `--keep-git-dir`, which the definition already holds), so a branch that moved is a
//!   miss and an unchanged one costs one `ls-remote`. `--checksum` is checked here: a hex
//!   prefix of the commit, or of the annotated tag object.
//! - **Check out**: `git fetch --depth 1` of that commit into a fresh repository in the
//!   store's `tmp/` (the whole history only when the server refuses a fetch by id), then
//!   a checkout of its tree (or of `subdir`), `.git` kept only with `--keep-git-dir` and
//!   no subdir. Every file is owned 0:0 and gets the commit's time as its mtime, so the
//!   layer is the same wherever and whenever it is made.
//!
//! - **Submodules**: `git submodule update --init --recursive --depth 1` in the checkout,
//!   as BuildKit does, before the subdir is taken. Relative submodule URLs (`../lib.git`)
//!   resolve against the repository's own URL (the scratch repository's `origin`). A
//!   submodule URL that is a local path or `file://` is refused: the repository is
//!   untrusted and must not read the host's files (the top level's `.gitmodules` is
//!   checked first for a clear error; `protocol.file.allow=user` stops nested ones).
//!
//! git runs without a terminal prompt (`GIT_TERMINAL_PROMPT=0`) and with
//! `protocol.file.allow=user` (a repository cannot pull local files in as submodules).
//! An `ssh` remote (`git@host:repo.git`, `ssh://user@host:port/path`) uses the agent
//! given as `--ssh default` when there is one, else the user's `SSH_AUTH_SOCK`; ssh runs
//! as BuildKit runs it (`GIT_SSH_COMMAND`): without the user's `~/.ssh/config` (`-F
//! /dev/null`) and, since kiln has no known-hosts input (BuildKit's is an LLB attribute
//! the Dockerfile frontend never sets), with `StrictHostKeyChecking=no`. Unlike BuildKit,
//! the host key is not written to the user's `known_hosts` either
//! (`UserKnownHostsFile=/dev/null`), and `BatchMode=yes` keeps ssh from ever prompting.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use kiln_ops::GitSource;

/// Why a git source failed. Each message names the repository.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    /// `git` could not be started.
    #[error("running git for {remote} (is git installed?)")]
    Spawn {
        /// The repository.
        remote: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A git command failed.
    #[error("git {what} of {remote} failed: {stderr}")]
    Failed {
        /// What was being done (`ls-remote`, `fetch`, ...).
        what: &'static str,
        /// The repository.
        remote: String,
        /// git's last line of error output.
        stderr: String,
    },
    /// The reference is not in the repository.
    #[error("repository {remote} does not contain ref {reference}")]
    NoRef {
        /// The repository.
        remote: String,
        /// The reference.
        reference: String,
    },
    /// A submodule's URL is a local path or `file://` (the host's files).
    #[error(
        "{remote}: submodule {path:?} has the local URL {url:?}; a repository may not read the host's files"
    )]
    LocalSubmodule {
        /// The repository.
        remote: String,
        /// The submodule's path in the repository.
        path: String,
        /// Its URL.
        url: String,
    },
    /// `--checksum` does not match.
    #[error("{remote}: expected checksum to match {want}, got {got}")]
    Checksum {
        /// The repository.
        remote: String,
        /// The checksum given.
        want: String,
        /// What the reference resolved to.
        got: String,
    },
    /// The subdir is not a directory of the commit.
    #[error("{remote}: subdir {subdir:?} is not a directory at commit {commit}")]
    Subdir {
        /// The repository.
        remote: String,
        /// The subdir.
        subdir: String,
        /// The commit.
        commit: String,
    },
    /// Moving or stamping the checked-out files failed.
    #[error("preparing the checkout of {remote}")]
    Io {
        /// The repository.
        remote: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

type Result<T, E = GitError> = std::result::Result<T, E>;

/// How git reaches remotes.
#[derive(Debug, Clone, Default)]
pub struct GitOptions {
    /// The agent an `ssh` remote authenticates with (`--ssh default`); `None` leaves
    /// the user's environment as it is.
    pub ssh_auth_sock: Option<PathBuf>,
    /// An HTTP(S) transfer slower than this many bytes per second for this many seconds
    /// is aborted (`--network-timeout`'s rate and stall, as `ADD <url>` has them).
    pub low_speed: Option<(u64, u64)>,
}

/// What a reference resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The commit id.
    pub commit: String,
    /// The annotated tag object's id, when the reference is one.
    pub tag: Option<String>,
}

/// Whether `s` is a full commit id (sha1 or sha256).
fn is_commit_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// How git runs ssh (see the module docs): BuildKit's command without known hosts, plus
/// no write to the user's `known_hosts` and no prompt.
const GIT_SSH_COMMAND: &str = "ssh -F /dev/null -o StrictHostKeyChecking=no \
     -o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR";

/// A `git` command with kiln's environment (see the module docs).
fn git(opts: &GitOptions) -> Command {
    let mut c = Command::new("git");
    if let Some(sock) = &opts.ssh_auth_sock {
        c.env("SSH_AUTH_SOCK", sock);
    }
    if let Some((rate, secs)) = opts.low_speed {
        c.arg("-c")
            .arg(format!("http.lowSpeedLimit={rate}"))
            .arg("-c")
            .arg(format!("http.lowSpeedTime={secs}"));
    }
    c.env("GIT_TERMINAL_PROMPT", "0")
        .env("GIT_SSH_COMMAND", GIT_SSH_COMMAND)
        .env("LC_ALL", "C")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .args(["-c", "protocol.file.allow=user"])
        .stdin(Stdio::null());
    c
}

/// Runs `cmd`; its stdout, or [`GitError::Failed`] with git's first `fatal:` line (the
/// cause; a submodule's is followed by retry notes), else its last line.
fn run(mut cmd: Command, what: &'static str, remote: &str) -> Result<String> {
    let out = cmd.output().map_err(|source| GitError::Spawn {
        remote: remote.to_string(),
        source,
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        let line = match lines.iter().position(|l| l.starts_with("fatal:")) {
            // ssh's reason (`Permission denied (publickey).`, `Connection refused`)
            // comes before git's generic line.
            Some(i) if i > 0 && lines[i].contains("Could not read from remote") => {
                format!("{} ({})", lines[i - 1].trim(), lines[i].trim())
            }
            Some(i) => lines[i].trim().to_string(),
            None => lines
                .last()
                .map_or("no error output", |l| l.trim())
                .to_string(),
        };
        return Err(GitError::Failed {
            what,
            remote: remote.to_string(),
            stderr: line,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The commit `source`'s reference names now (one `git ls-remote`, none for a commit
/// id), checked against its `--checksum`.
pub fn resolve(source: &GitSource, opts: &GitOptions) -> Result<Resolved> {
    let remote = &source.remote;
    let resolved = match source.reference.as_deref() {
        Some(r) if is_commit_id(&r.to_ascii_lowercase()) => Resolved {
            commit: r.to_ascii_lowercase(),
            tag: None,
        },
        r => {
            let reference = r.unwrap_or("HEAD");
            let mut cmd = git(opts);
            // The peeled name too: an annotated tag's commit is listed as `NAME^{}`.
            cmd.args([
                "ls-remote",
                "--",
                remote,
                reference,
                &format!("{reference}^{{}}"),
            ]);
            let out = run(cmd, "ls-remote", remote)?;
            pick_ref(&out, reference).ok_or_else(|| GitError::NoRef {
                remote: remote.clone(),
                reference: reference.to_string(),
            })?
        }
    };
    check_checksum(source, &resolved)?;
    Ok(resolved)
}

/// The commit (and annotated tag) `reference` names in `git ls-remote` output: an exact
/// name first (`HEAD`, `refs/...`), then a branch, then a tag (peeled through `^{}`).
fn pick_ref(ls_remote: &str, reference: &str) -> Option<Resolved> {
    let refs: Vec<(&str, &str)> = ls_remote
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(id, name)| (id.trim(), name.trim()))
        .collect();
    let get = |name: &str| refs.iter().find(|(_, n)| *n == name).map(|(id, _)| *id);
    for name in [
        reference.to_string(),
        format!("refs/heads/{reference}"),
        format!("refs/tags/{reference}"),
    ] {
        if let Some(id) = get(&name) {
            return Some(match get(&format!("{name}^{{}}")) {
                Some(commit) => Resolved {
                    commit: commit.to_string(),
                    tag: Some(id.to_string()),
                },
                None => Resolved {
                    commit: id.to_string(),
                    tag: None,
                },
            });
        }
    }
    None
}

/// `--checksum`: a hex prefix of the commit's id or of the annotated tag's (BuildKit).
pub fn check_checksum(source: &GitSource, r: &Resolved) -> Result<()> {
    let Some(want) = &source.checksum else {
        return Ok(());
    };
    let want = want.to_ascii_lowercase();
    if r.commit.starts_with(&want) || r.tag.as_ref().is_some_and(|t| t.starts_with(&want)) {
        return Ok(());
    }
    Err(GitError::Checksum {
        remote: source.remote.clone(),
        want,
        got: match &r.tag {
            Some(t) => format!("{t} or {}", r.commit),
            None => r.commit.clone(),
        },
    })
}

/// Checks `commit` of `source` out into `out` (an empty directory): the tree, or its
/// `subdir`, with `.git` when kept; files owned 0:0 (as root) and dated at the commit.
/// `scratch` is an empty directory for the repository when `.git` is not kept.
pub fn checkout(
    source: &GitSource,
    commit: &str,
    out: &Path,
    scratch: &Path,
    opts: &GitOptions,
) -> Result<()> {
    let remote = &source.remote;
    let io = |source: std::io::Error| GitError::Io {
        remote: remote.clone(),
        source,
    };
    let keep = source.keep_git_dir && source.subdir.is_none();
    let git_dir: PathBuf = if keep {
        out.join(".git")
    } else {
        scratch.join("repo.git")
    };
    let with_dir = |args: &[&str]| {
        let mut c = git(opts);
        c.arg("--git-dir").arg(&git_dir).args(args);
        c
    };
    let mut init = git(opts);
    init.args(["init", "-q", "--bare"]).arg(&git_dir);
    run(init, "init", remote)?;
    // `origin`: what relative submodule URLs resolve against (and, with `.git` kept,
    // what a user fetches from).
    run(
        with_dir(&["remote", "add", "origin", remote]),
        "remote",
        remote,
    )?;
    // By id first (protocol v2 servers allow it), one commit deep; a server that
    // refuses gets asked for everything, and the commit is taken from that.
    let shallow = with_dir(&[
        "fetch",
        "-q",
        "--no-tags",
        "--depth=1",
        "--",
        remote,
        commit,
    ]);
    if run(shallow, "fetch", remote).is_err() {
        let all = with_dir(&[
            "fetch",
            "-q",
            "--tags",
            "--",
            remote,
            "+refs/heads/*:refs/remotes/origin/*",
        ]);
        run(all, "fetch", remote)?;
    }
    let verify = with_dir(&["cat-file", "-e", &format!("{commit}^{{commit}}")]);
    if run(verify, "fetch", remote).is_err() {
        return Err(GitError::NoRef {
            remote: remote.clone(),
            reference: commit.to_string(),
        });
    }
    let shown = run(
        with_dir(&[
            "show",
            "-s",
            "--format=%ct",
            &format!("{commit}^{{commit}}"),
        ]),
        "show",
        remote,
    )?;
    let time: i64 = shown.trim().parse().map_err(|_| GitError::Failed {
        what: "show",
        remote: remote.clone(),
        stderr: format!("no commit time for {commit}: {:?}", shown.trim()),
    })?;
    let tree = if source.subdir.is_some() {
        scratch.join("tree")
    } else {
        out.to_path_buf()
    };
    std::fs::create_dir_all(&tree).map_err(io)?;
    let mut co = with_dir(&["--work-tree"]);
    co.arg(&tree)
        .args(["checkout", "-q", "-f", commit, "--", "."]);
    run(co, "checkout", remote)?;
    if tree.join(".gitmodules").exists() {
        submodules(source, &git_dir, &tree, keep, opts)?;
    }
    if keep {
        // A repository a user can work in: not bare, HEAD at the commit, origin set.
        run(
            with_dir(&["config", "core.bare", "false"]),
            "config",
            remote,
        )?;
        run(
            with_dir(&["update-ref", "--no-deref", "HEAD", commit]),
            "update-ref",
            remote,
        )?;
        let _ = std::fs::remove_file(git_dir.join("FETCH_HEAD"));
    } else if let Some(sub) = &source.subdir {
        let from = tree.join(sub);
        let is_dir = std::fs::symlink_metadata(&from).is_ok_and(|m| m.is_dir());
        if !is_dir {
            return Err(GitError::Subdir {
                remote: remote.clone(),
                subdir: sub.clone(),
                commit: commit.to_string(),
            });
        }
        for entry in std::fs::read_dir(&from).map_err(io)? {
            let entry = entry.map_err(io)?;
            std::fs::rename(entry.path(), out.join(entry.file_name())).map_err(io)?;
        }
    }
    stamp(out, time).map_err(io)
}

/// Fetches the submodules of the checkout in `tree` (recursively, one commit deep, as
/// BuildKit does), after refusing local URLs in its `.gitmodules`. Without `keep`, the
/// `.git` files that point into the scratch repository are removed.
fn submodules(
    source: &GitSource,
    git_dir: &Path,
    tree: &Path,
    keep: bool,
    opts: &GitOptions,
) -> Result<()> {
    let remote = &source.remote;
    let mut list = git(opts);
    list.arg("config")
        .arg("--file")
        .arg(tree.join(".gitmodules"))
        .args(["--get-regexp", r"^submodule\..*\.(path|url)$"]);
    // No entries: git exits 1 and there is nothing to fetch.
    let listed = run(list, "config", remote).unwrap_or_default();
    for (path, url) in submodule_urls(&listed) {
        if is_local_url(&url) {
            return Err(GitError::LocalSubmodule {
                remote: remote.clone(),
                path,
                url,
            });
        }
    }
    let update = |depth: &[&str]| {
        let mut c = git(opts);
        c.arg("--git-dir")
            .arg(git_dir)
            .arg("--work-tree")
            .arg(tree)
            .current_dir(tree)
            .args(["submodule", "update", "-q", "--init", "--recursive"])
            .args(depth);
        run(c, "submodule update", remote)
    };
    // One commit deep; a server that will not give a commit that way gets asked for
    // the history (BuildKit retries without `--depth` the same way).
    if let Err(e) = update(&["--depth=1"]) {
        match e {
            GitError::Failed { ref stderr, .. } if stderr.contains("not allowed") => {
                return Err(e);
            }
            _ => {
                update(&[])?;
            }
        }
    }
    if !keep {
        remove_git_links(tree).map_err(|source| GitError::Io {
            remote: remote.clone(),
            source,
        })?;
    }
    Ok(())
}

/// `(path, url)` of each submodule in `git config --get-regexp` output of a
/// `.gitmodules` (keys `submodule.NAME.path` and `submodule.NAME.url`).
fn submodule_urls(listed: &str) -> Vec<(String, String)> {
    let mut by_name: Vec<(String, Option<String>, Option<String>)> = Vec::new();
    for line in listed.lines() {
        let Some((key, value)) = line.split_once(' ') else {
            continue;
        };
        let Some(rest) = key.strip_prefix("submodule.") else {
            continue;
        };
        let (name, field) = match (rest.strip_suffix(".path"), rest.strip_suffix(".url")) {
            (Some(n), _) => (n, 0),
            (_, Some(n)) => (n, 1),
            _ => continue,
        };
        let i = match by_name.iter().position(|(n, _, _)| n == name) {
            Some(i) => i,
            None => {
                by_name.push((name.to_string(), None, None));
                by_name.len() - 1
            }
        };
        let slot = if field == 0 {
            &mut by_name[i].1
        } else {
            &mut by_name[i].2
        };
        *slot = Some(value.to_string());
    }
    by_name
        .into_iter()
        .filter_map(|(name, path, url)| Some((path.unwrap_or(name), url?)))
        .collect()
}

/// Whether a submodule URL reads the local filesystem: `file://`, or neither a URL
/// (`scheme://`), an scp-like `[user@]host:path`, nor relative to the superproject's
/// URL (`./`, `../`).
fn is_local_url(url: &str) -> bool {
    let url = url.trim();
    if url.starts_with("./") || url.starts_with("../") {
        return false;
    }
    if let Some((scheme, _)) = url.split_once("://") {
        return scheme.eq_ignore_ascii_case("file");
    }
    // git's rule for the scp-like form: a colon before the first slash.
    match (url.find(':'), url.find('/')) {
        (Some(c), Some(s)) => c > s,
        (Some(_), None) => false,
        (None, _) => true,
    }
}

/// Removes the `.git` files submodule checkouts have (they name the scratch repository,
/// which is gone once the layer is made).
fn remove_git_links(root: &Path) -> std::io::Result<()> {
    let mut dirs = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let ty = e.file_type()?;
            if ty.is_dir() {
                dirs.push(e.path());
            } else if e.file_name() == ".git" && d != root {
                std::fs::remove_file(e.path())?;
            }
        }
    }
    Ok(())
}

/// Owner 0:0 (when root) and mtime `time` for everything under `root`, links included
/// (never followed), and mode 0755 for `root` itself.
fn stamp(root: &Path, time: i64) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let t = filetime::FileTime::from_unix_time(time, 0);
    let as_root = crate::snapshots::is_root();
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o755))?;
    let mut dirs = vec![root.to_path_buf()];
    let mut all = vec![root.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            if e.file_type()?.is_dir() {
                dirs.push(e.path());
            }
            all.push(e.path());
        }
    }
    // Children before parents: setting a child's times does not touch its parent's
    // mtime, but creating nothing more here keeps it so either way.
    for p in all.iter().rev() {
        if as_root {
            std::os::unix::fs::lchown(p, Some(0), Some(0))?;
        }
        filetime::set_symlink_file_times(p, t, t)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "1111111111111111111111111111111111111111";
    const T: &str = "2222222222222222222222222222222222222222";
    const C: &str = "3333333333333333333333333333333333333333";

    fn ls() -> String {
        format!(
            "{A}\tHEAD\n{A}\trefs/heads/main\n{T}\trefs/tags/v1\n{C}\trefs/tags/v1^{{}}\n{C}\trefs/tags/light\n"
        )
    }

    #[test]
    fn references_resolve_to_commits() {
        let r = |name| pick_ref(&ls(), name);
        assert_eq!(r("HEAD").unwrap().commit, A);
        assert_eq!(r("main").unwrap().commit, A);
        let v1 = r("v1").unwrap();
        assert_eq!((v1.commit.as_str(), v1.tag.as_deref()), (C, Some(T)));
        assert_eq!(r("light").unwrap().tag, None);
        assert_eq!(r("refs/tags/v1").unwrap().commit, C);
        assert_eq!(r("nope"), None);
    }

    #[test]
    fn local_submodule_urls_are_told_apart() {
        for url in [
            "/srv/repo.git",
            "file:///etc",
            "FILE://x/y",
            "sub.git",
            "a/b:c",
            "C",
        ] {
            assert!(is_local_url(url), "{url}");
        }
        for url in [
            "../lib.git",
            "./lib",
            "https://h/r.git",
            "git://h/r",
            "ssh://git@h:22/r",
            "git@h:o/r.git",
            "host:path",
        ] {
            assert!(!is_local_url(url), "{url}");
        }
    }

    #[test]
    fn gitmodules_entries_pair_paths_and_urls() {
        let listed = "submodule.lib.path vendor/lib\nsubmodule.lib.url ../lib.git\n\
                      submodule.x.url /etc\nsubmodule.nourl.path p\n";
        assert_eq!(
            submodule_urls(listed),
            vec![
                ("vendor/lib".to_string(), "../lib.git".to_string()),
                ("x".to_string(), "/etc".to_string()),
            ]
        );
    }

    #[test]
    fn checksums_are_prefixes_of_the_commit_or_tag() {
        let src = |sum: &str| GitSource {
            remote: "https://h/r.git".into(),
            reference: None,
            subdir: None,
            keep_git_dir: false,
            checksum: Some(sum.into()),
        };
        let r = Resolved {
            commit: C.into(),
            tag: Some(T.into()),
        };
        assert!(check_checksum(&src("3333"), &r).is_ok());
        assert!(check_checksum(&src("2222"), &r).is_ok());
        let e = check_checksum(&src("4444"), &r).unwrap_err().to_string();
        assert!(e.contains("expected checksum to match 4444"), "{e}");
        assert!(is_commit_id(A) && !is_commit_id("abc"));
    }
}
