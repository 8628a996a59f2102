//! `ADD` of a git repository (BuildKit's `dfgitutil.ParseGitRef` and the git branch of
//! `dispatchCopy`): `https://host/repo.git#ref:subdir`, `git@host:repo.git#ref`,
//! `ssh://user@host:port/repo.git#ref`, `git://host/repo#ref`, and the query form `?ref=..&subdir=..&checksum=..`.

use kiln_ops::GitSource;

/// A parsed git source reference, before `ADD`'s flags are applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitRef {
    /// The repository, without fragment or query.
    pub remote: String,
    /// Branch, tag or commit (`None`: the default branch).
    pub reference: Option<String>,
    /// Directory inside the repository (`None`: its root).
    pub subdir: Option<String>,
    /// `checksum=` of the query form.
    pub checksum: Option<String>,
    /// `keep-git-dir=` of the query form.
    pub keep_git_dir: Option<bool>,
}

impl GitRef {
    /// The graph's source for this reference with `ADD`'s `--keep-git-dir` and
    /// `--checksum` (a flag and a query value must agree).
    pub fn source(self, keep_git_dir: bool, checksum: Option<&str>) -> Result<GitSource, String> {
        let checksum = match (checksum, self.checksum) {
            (Some(a), Some(b)) if !a.eq_ignore_ascii_case(&b) => {
                return Err(format!(
                    "checksum mismatch: --checksum={a} but the URL says checksum={b}"
                ));
            }
            (Some(a), _) => Some(a.to_ascii_lowercase()),
            (None, b) => b.map(|b| b.to_ascii_lowercase()),
        };
        Ok(GitSource {
            remote: self.remote,
            reference: self.reference,
            subdir: self.subdir,
            keep_git_dir: keep_git_dir || self.keep_git_dir.unwrap_or(false),
            checksum,
        })
    }
}

/// Whether `s` is a commit id prefix as `--checksum` takes it for git: hex, 1 to 64.
pub fn is_commit_prefix(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Parses a git source. `Err` says what is wrong with it.
pub fn parse_git_ref(s: &str) -> Result<GitRef, String> {
    let (rest, fragment) = match s.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (s, None),
    };
    // The query form applies to URLs (`git@host:repo.git` has no query).
    let (remote, query) = match rest.split_once('?') {
        Some((r, q)) if !rest.starts_with("git@") => (r, Some(q)),
        _ => (rest, None),
    };
    if remote.is_empty() {
        return Err(format!("invalid git reference {s:?}: no repository"));
    }
    let mut g = GitRef {
        remote: remote.to_string(),
        reference: None,
        subdir: None,
        checksum: None,
        keep_git_dir: None,
    };
    if let Some(f) = fragment {
        let (r, sub) = match f.split_once(':') {
            Some((r, sub)) => (r, Some(sub)),
            None => (f, None),
        };
        g.reference = Some(r).filter(|r| !r.is_empty()).map(str::to_string);
        g.subdir = sub.map(str::to_string);
    }
    for kv in query.into_iter().flat_map(|q| q.split('&')) {
        if kv.is_empty() {
            continue;
        }
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        let set = |slot: &mut Option<String>| -> Result<(), String> {
            if slot.is_some() {
                return Err(format!("invalid git reference {s:?}: {k} given twice"));
            }
            *slot = Some(v.to_string());
            Ok(())
        };
        match k {
            "ref" | "branch" | "tag" => set(&mut g.reference)?,
            "subdir" => set(&mut g.subdir)?,
            "checksum" | "commit" => set(&mut g.checksum)?,
            "keep-git-dir" => {
                g.keep_git_dir = Some(match v {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(format!("invalid git reference {s:?}: keep-git-dir={v}")),
                })
            }
            _ => {
                return Err(format!(
                    "invalid git reference {s:?}: unknown parameter {k}"
                ));
            }
        }
    }
    if let Some(sub) = &g.subdir {
        let cleaned = super::clean_path(&format!("/{sub}"));
        if sub.split('/').any(|c| c == "..") {
            return Err(format!(
                "invalid git reference {s:?}: subdir {sub:?} leaves the repository"
            ));
        }
        g.subdir = Some(cleaned.trim_start_matches('/').to_string()).filter(|s| !s.is_empty());
    }
    if let Some(c) = &g.checksum {
        if !is_commit_prefix(c) {
            return Err(format!(
                "invalid git reference {s:?}: checksum {c:?} is not a commit id"
            ));
        }
    }
    Ok(g)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> GitRef {
        parse_git_ref(s).unwrap()
    }

    #[test]
    fn fragments_give_ref_and_subdir() {
        let g = p("https://h/r.git#v1:docs/api");
        assert_eq!(g.remote, "https://h/r.git");
        assert_eq!(g.reference.as_deref(), Some("v1"));
        assert_eq!(g.subdir.as_deref(), Some("docs/api"));
        let g = p("git@github.com:o/r.git#main");
        assert_eq!(g.remote, "git@github.com:o/r.git");
        assert_eq!(g.reference.as_deref(), Some("main"));
        assert_eq!(g.subdir, None);
        let g = p("ssh://git@127.0.0.1:2222/srv/r.git#v1:a");
        assert_eq!(g.remote, "ssh://git@127.0.0.1:2222/srv/r.git");
        assert_eq!(g.reference.as_deref(), Some("v1"));
        assert!(crate::instructions::is_git("ssh://git@h/r"));
        let g = p("git://h/r#:/sub/");
        assert_eq!((g.reference, g.subdir.as_deref()), (None, Some("sub")));
        let g = p("https://h/r.git");
        assert_eq!((g.reference, g.subdir), (None, None));
        assert_eq!(p("https://h/r.git#v1:/").subdir, None);
    }

    #[test]
    fn query_form() {
        let g = p("https://h/r.git?tag=v2&subdir=a&checksum=ABC123&keep-git-dir=true");
        assert_eq!(g.remote, "https://h/r.git");
        assert_eq!(g.reference.as_deref(), Some("v2"));
        assert_eq!(g.subdir.as_deref(), Some("a"));
        assert_eq!(g.keep_git_dir, Some(true));
        let s = g.source(false, None).unwrap();
        assert_eq!(s.checksum.as_deref(), Some("abc123"));
        assert!(s.keep_git_dir);
        let g = p("https://h/r.git?checksum=abc");
        assert!(g.clone().source(false, Some("ABC")).is_ok());
        assert!(
            g.source(false, Some("abd"))
                .unwrap_err()
                .contains("mismatch")
        );
    }

    #[test]
    fn bad_references() {
        for (s, says) in [
            ("https://h/r.git?x=1", "unknown parameter x"),
            ("https://h/r.git?ref=a&tag=b", "given twice"),
            ("https://h/r.git#main:../etc", "leaves the repository"),
            ("https://h/r.git?checksum=xyz", "not a commit id"),
            ("#main", "no repository"),
        ] {
            let e = parse_git_ref(s).unwrap_err();
            assert!(e.contains(says), "{s}: {e}");
        }
    }
}
