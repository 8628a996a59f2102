//! Image references with Docker's normalisation rules.

use std::fmt;
use std::str::FromStr;

use crate::error::{RegistryError, Result};

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";
/// The host actually serving Docker Hub's registry API.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A fully qualified image reference: `registry/repository[:tag][@digest]`.
///
/// [`Reference::parse`] applies Docker's normalisation: no registry means
/// `docker.io`, a one-component Docker Hub name gets `library/`, and no tag
/// and no digest means `:latest`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Reference {
    /// Registry host, with port if any (`docker.io`, `127.0.0.1:5000`).
    pub registry: String,
    /// Repository path (`library/busybox`).
    pub repository: String,
    /// Tag, if any.
    pub tag: Option<String>,
    /// Pinned digest (`sha256:...`), if any.
    pub digest: Option<String>,
}

impl Reference {
    /// Parse and normalise a reference, e.g. `busybox`,
    /// `ghcr.io/o/app:1.2`, `localhost:5000/app@sha256:...`.
    pub fn parse(input: &str) -> Result<Reference> {
        let bad = |reason: &str| RegistryError::InvalidReference {
            input: input.to_owned(),
            reason: reason.to_owned(),
        };
        if input.is_empty() {
            return Err(bad("empty"));
        }
        if input.len() > 4096 {
            return Err(bad("too long"));
        }
        let (rest, digest) = match input.split_once('@') {
            Some((rest, d)) => {
                kiln_cache::Digest::parse(d).map_err(|e| bad(&e.to_string()))?;
                (rest, Some(d.to_owned()))
            }
            None => (input, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let i = last_slash + i;
                (&rest[..i], Some(rest[i + 1..].to_owned()))
            }
            None => (rest, None),
        };
        if let Some(tag) = &tag {
            validate_tag(tag).map_err(bad)?;
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), path.to_owned())
            }
            _ => (DOCKER_HUB.to_owned(), name.to_owned()),
        };
        if registry.is_empty() || registry.contains(|c: char| c.is_whitespace() || c == '/') {
            return Err(bad("invalid registry host"));
        }
        let registry = match registry.as_str() {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB.to_owned(),
            _ => registry,
        };
        let repository = if registry == DOCKER_HUB && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        validate_repository(&repository).map_err(bad)?;
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The same repository at another tag (digest dropped).
    pub fn with_tag(&self, tag: &str) -> Reference {
        Reference {
            tag: Some(tag.to_owned()),
            digest: None,
            ..self.clone()
        }
    }

    /// The same repository pinned to `digest` (tag dropped).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            tag: None,
            digest: Some(digest.to_owned()),
            ..self.clone()
        }
    }

    /// What the manifest endpoint is addressed by: the digest if pinned,
    /// else the tag (`latest` if neither).
    pub fn manifest_ref(&self) -> &str {
        self.digest
            .as_deref()
            .or(self.tag.as_deref())
            .unwrap_or("latest")
    }

    /// Docker's short form: `busybox:latest` for
    /// `docker.io/library/busybox:latest`, `o/app:1` for `docker.io/o/app:1`.
    pub fn familiar(&self) -> String {
        let mut s = String::new();
        if self.registry != DOCKER_HUB {
            s.push_str(&self.registry);
            s.push('/');
        }
        let repo = if self.registry == DOCKER_HUB {
            self.repository
                .strip_prefix("library/")
                .unwrap_or(&self.repository)
        } else {
            &self.repository
        };
        s.push_str(repo);
        self.push_suffix(&mut s);
        s
    }

    /// The host serving the registry API (`registry-1.docker.io` for
    /// Docker Hub).
    pub fn api_host(&self) -> &str {
        api_host(&self.registry)
    }

    fn push_suffix(&self, s: &mut String) {
        if let Some(t) = &self.tag {
            s.push(':');
            s.push_str(t);
        }
        if let Some(d) = &self.digest {
            s.push('@');
            s.push_str(d);
        }
    }
}

/// The host serving the registry API for a registry name.
pub(crate) fn api_host(registry: &str) -> &str {
    if registry == DOCKER_HUB {
        DOCKER_HUB_API
    } else {
        registry
    }
}

/// Normalise a registry name as given to `kiln login` (`docker.io`,
/// `index.docker.io`, `https://index.docker.io/v1/` all mean Docker Hub).
pub(crate) fn normalize_registry(input: &str) -> String {
    let s = input
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "" => DOCKER_HUB.to_owned(),
        h => h.to_owned(),
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = format!("{}/{}", self.registry, self.repository);
        self.push_suffix(&mut s);
        f.write_str(&s)
    }
}

impl FromStr for Reference {
    type Err = RegistryError;
    fn from_str(s: &str) -> Result<Self> {
        Reference::parse(s)
    }
}

fn validate_tag(tag: &str) -> std::result::Result<(), &'static str> {
    let ok_first = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok_first
        || tag.len() > 128
        || !tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err("invalid tag (allowed: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127})");
    }
    Ok(())
}

/// Distribution's grammar: components of `[a-z0-9]+` joined by `.`, `_`,
/// `__` or runs of `-`, separated by `/`.
fn validate_repository(repo: &str) -> std::result::Result<(), &'static str> {
    if repo.is_empty() {
        return Err("empty repository name");
    }
    if repo.len() > 255 {
        return Err("repository name longer than 255 characters");
    }
    for comp in repo.split('/') {
        let bytes = comp.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err("repository components must start and end with [a-z0-9]");
        }
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            if alnum(b) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &comp[start..i];
            let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-');
            if !ok {
                return Err(
                    "repository names may only contain lowercase letters, digits and single \
                     separators (., _, __, -)",
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn normalisation_table() {
        let cases: &[(&str, &str, &str)] = &[
            // input, full Display, familiar
            (
                "busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "busybox:1.36",
                "docker.io/library/busybox:1.36",
                "busybox:1.36",
            ),
            (
                "library/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "docker.io/busybox",
                "docker.io/library/busybox:latest",
                "busybox:latest",
            ),
            (
                "index.docker.io/library/busybox:1",
                "docker.io/library/busybox:1",
                "busybox:1",
            ),
            ("user/app", "docker.io/user/app:latest", "user/app:latest"),
            (
                "ghcr.io/o/app:v1.2",
                "ghcr.io/o/app:v1.2",
                "ghcr.io/o/app:v1.2",
            ),
            (
                "localhost/app",
                "localhost/app:latest",
                "localhost/app:latest",
            ),
            (
                "localhost:5000/a/b/c:t",
                "localhost:5000/a/b/c:t",
                "localhost:5000/a/b/c:t",
            ),
            (
                "127.0.0.1:5000/app",
                "127.0.0.1:5000/app:latest",
                "127.0.0.1:5000/app:latest",
            ),
            ("[::1]:5000/app:x", "[::1]:5000/app:x", "[::1]:5000/app:x"),
            (
                "my-reg.example:443/x__y/a.b-c",
                "my-reg.example:443/x__y/a.b-c:latest",
                "my-reg.example:443/x__y/a.b-c:latest",
            ),
        ];
        for (input, full, familiar) in cases {
            let r = Reference::parse(input).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(r.to_string(), *full, "{input}");
            assert_eq!(r.familiar(), *familiar, "{input}");
            assert_eq!(Reference::parse(full).unwrap(), r, "round trip {full}");
        }
    }

    #[test]
    fn digests() {
        let r = Reference::parse(&format!("busybox@{D}")).unwrap();
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.to_string(), format!("docker.io/library/busybox@{D}"));
        let r = Reference::parse(&format!("localhost:5000/app:1@{D}")).unwrap();
        assert_eq!(r.tag.as_deref(), Some("1"));
        assert_eq!(r.manifest_ref(), D);
        assert_eq!(r.familiar(), format!("localhost:5000/app:1@{D}"));
    }

    #[test]
    fn rejects() {
        for bad in [
            "",
            "Busybox",
            "app:",
            "app:-x",
            "a//b",
            "-a/b",
            "a/b-",
            "a..b",
            "busybox@sha256:abc",
            "busybox@md5:abc",
            "ghcr.io/",
            "a b",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(
                err.to_string().contains("invalid image reference"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            Reference::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
        assert_eq!(Reference::parse("q.io/a").unwrap().api_host(), "q.io");
        assert_eq!(
            normalize_registry("https://index.docker.io/v1/"),
            "docker.io"
        );
        assert_eq!(normalize_registry("localhost:5000"), "localhost:5000");
        assert_eq!(normalize_registry("http://q.io/"), "q.io");
    }
}
