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
    /// `ghcr.io/o/app:1.2`, `localhost:5000/app@sha256:...`, with Docker's grammar
    /// and messages (distribution's `ParseNormalizedNamed`): `Bad:1` is refused with
    /// "invalid reference format: repository name (library/Bad) must be lowercase",
    /// `bad:1:2` with "invalid reference format". A first component is a registry
    /// host only if it has a `.` or a `:` or is `localhost` (so `UPPER/case` is an
    /// uppercase repository, refused, not a host named `UPPER`).
    pub fn parse(input: &str) -> Result<Reference> {
        let bad = |reason: String| RegistryError::InvalidReference {
            input: input.to_owned(),
            reason,
        };
        let format = || bad(FORMAT.to_owned());
        if input.is_empty() {
            return Err(bad(
                "repository name must have at least one component".into()
            ));
        }
        if input.len() == 64
            && input
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
        {
            return Err(bad(format!(
                "invalid repository name ({input}), cannot specify 64-byte hexadecimal strings"
            )));
        }
        // Docker's splitDockerDomain.
        let (registry, remainder) = match input.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, rest.to_owned())
            }
            _ => (DOCKER_HUB, input.to_owned()),
        };
        let registry = match registry {
            "index.docker.io" | "registry-1.docker.io" => DOCKER_HUB,
            r => r,
        };
        let remainder = if registry == DOCKER_HUB && !remainder.contains('/') {
            format!("library/{remainder}")
        } else {
            remainder
        };
        let remote = remainder.split([':', '@']).next().unwrap_or_default();
        if remote.to_ascii_lowercase() != remote {
            return Err(bad(format!(
                "{FORMAT}: repository name ({remote}) must be lowercase"
            )));
        }
        let (rest, digest) = match remainder.split_once('@') {
            Some((rest, d)) => {
                kiln_cache::Digest::parse(d).map_err(|e| bad(format!("{FORMAT}: {e}")))?;
                (rest, Some(d.to_owned()))
            }
            None => (remainder.as_str(), None),
        };
        let (repository, tag) = match rest.split_once(':') {
            Some((repo, tag)) => (repo, Some(tag.to_owned())),
            None => (rest, None),
        };
        if !valid_host(registry)
            || !repository.split('/').all(valid_component)
            || !tag.as_deref().is_none_or(valid_tag)
        {
            return Err(format());
        }
        if registry.len() + 1 + repository.len() > 255 {
            return Err(bad(
                "repository name must not be more than 255 characters".into()
            ));
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_owned())
        } else {
            tag
        };
        Ok(Reference {
            registry: registry.to_owned(),
            repository: repository.to_owned(),
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
        let mut s = self.familiar_repository();
        self.push_suffix(&mut s);
        s
    }

    /// The repository as Docker shows it, without tag or digest: `busybox`,
    /// `o/app`, `ghcr.io/o/app` (a `docker save` `repositories` key).
    pub fn familiar_repository(&self) -> String {
        if self.registry != DOCKER_HUB {
            return format!("{}/{}", self.registry, self.repository);
        }
        match self.repository.strip_prefix("library/") {
            Some(rest) if !rest.contains('/') => rest.to_owned(),
            _ => self.repository.clone(),
        }
    }

    /// The fully qualified repository, without tag or digest:
    /// `docker.io/library/busybox`.
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
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

/// Docker's message for anything outside the grammar.
const FORMAT: &str = "invalid reference format";

/// `[\w][\w.-]{0,127}`.
fn valid_tag(tag: &str) -> bool {
    let b = tag.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

/// A path component: `[a-z0-9]+` runs joined by `.`, `_`, `__` or runs of `-`.
fn valid_component(comp: &str) -> bool {
    let b = comp.as_bytes();
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &comp[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|c| c == b'-')) {
            return false;
        }
    }
    true
}

/// `host[:port]`: a DNS name (components of `[a-zA-Z0-9]` and inner `-`, joined by
/// `.`), an IPv4 address, or `[IPv6]`.
fn valid_host(registry: &str) -> bool {
    let digits = |p: &str| !p.is_empty() && p.bytes().all(|c| c.is_ascii_digit());
    if let Some(rest) = registry.strip_prefix('[') {
        let Some((v6, port)) = rest.split_once(']') else {
            return false;
        };
        return !v6.is_empty()
            && v6.bytes().all(|c| c.is_ascii_hexdigit() || c == b':')
            && (port.is_empty() || port.strip_prefix(':').is_some_and(digits));
    }
    let (host, port) = match registry.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (registry, None),
    };
    port.is_none_or(digits)
        && host.split('.').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
        })
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
            assert!(familiar.starts_with(&r.familiar_repository()), "{input}");
            assert!(full.starts_with(&r.name()), "{input}");
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
            "bad:tag:x",
            "ex_ample.com/app",
            "host:port/app",
            "[::1/app",
        ] {
            let err = Reference::parse(bad).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{bad:?}: invalid reference format")),
                "{err}"
            );
        }
    }

    /// Regression: `kiln build -t Bad:Tag:x` and `-t UPPER/case` were accepted (only
    /// push refused them); Docker's messages, word for word.
    #[test]
    fn docker_messages() {
        let reason = |s: &str| match Reference::parse(s).unwrap_err() {
            RegistryError::InvalidReference { reason, .. } => reason,
            e => panic!("{e}"),
        };
        assert_eq!(
            reason("Bad:Tag:x"),
            "invalid reference format: repository name (library/Bad) must be lowercase"
        );
        assert_eq!(
            reason("UPPER/case"),
            "invalid reference format: repository name (UPPER/case) must be lowercase"
        );
        assert_eq!(
            reason("Busybox"),
            "invalid reference format: repository name (library/Busybox) must be lowercase"
        );
        assert_eq!(reason("bad:tag:x"), "invalid reference format");
        assert_eq!(
            reason(""),
            "repository name must have at least one component"
        );
        let hex = "a".repeat(64);
        assert_eq!(
            reason(&hex),
            format!("invalid repository name ({hex}), cannot specify 64-byte hexadecimal strings")
        );
        assert_eq!(
            reason(&format!("q.io/{}", "a".repeat(251))),
            "repository name must not be more than 255 characters"
        );
        // An uppercase registry host is a host, as Docker has it.
        assert_eq!(Reference::parse("Q.io/app").unwrap().registry, "Q.io");
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
