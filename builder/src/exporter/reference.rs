//! Image names as tags: parsing and Docker's normalisation (`app:1` is
//! `docker.io/library/app:1`).

use super::{ExportError, Result};

const DOCKER_HUB: &str = "docker.io";

/// A tagged image name, normalised the way Docker does it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    domain: String,
    path: String,
    tag: String,
}

fn invalid(reference: &str, reason: &'static str) -> ExportError {
    ExportError::InvalidReference {
        reference: reference.to_string(),
        reason,
    }
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

/// A path component: lowercase alphanumerics separated by `.`, `_`, `__` or runs of
/// `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|s| s == b'-')) {
            return false;
        }
    }
    true
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

fn valid_tag(t: &str) -> bool {
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'))
}

impl ImageRef {
    /// Parses `[domain/]path[:tag]`; a missing tag is `latest`, a missing domain is
    /// Docker Hub, and single-component Docker Hub names get `library/`. Digest
    /// references (`@sha256:...`) are refused: an export needs a tag.
    pub fn parse(reference: &str) -> Result<Self> {
        if reference.contains('@') {
            return Err(invalid(
                reference,
                "digest references cannot name an export",
            ));
        }
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, "latest"),
        };
        if !valid_tag(tag) {
            return Err(invalid(
                reference,
                "the tag must be 1-128 of [A-Za-z0-9_.-], not starting with . or -",
            ));
        }
        if name.is_empty() || name.len() > 255 {
            return Err(invalid(reference, "the name must be 1-255 characters"));
        }
        let (domain, path) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.bytes().any(|b| b.is_ascii_uppercase()) =>
            {
                (first, rest)
            }
            _ => (DOCKER_HUB, name),
        };
        let domain = if domain == "index.docker.io" {
            DOCKER_HUB
        } else {
            domain
        };
        if !valid_domain(domain) {
            return Err(invalid(reference, "invalid registry host"));
        }
        if !path.split('/').all(valid_component) {
            return Err(invalid(
                reference,
                "repository path components must be lowercase [a-z0-9] separated by ., _, __ or -",
            ));
        }
        let path = if domain == DOCKER_HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path.to_string()
        };
        Ok(ImageRef {
            domain: domain.to_string(),
            path,
            tag: tag.to_string(),
        })
    }

    /// The tag, e.g. `1`.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The fully qualified repository, e.g. `docker.io/library/app`.
    pub fn repository(&self) -> String {
        format!("{}/{}", self.domain, self.path)
    }

    /// The fully qualified name with tag, e.g. `docker.io/library/app:1` (containerd's
    /// `io.containerd.image.name`).
    pub fn full_name(&self) -> String {
        format!("{}:{}", self.repository(), self.tag)
    }

    /// The repository as Docker shows it, e.g. `app`, `user/app` or
    /// `ghcr.io/org/app`.
    pub fn familiar_repository(&self) -> String {
        if self.domain == DOCKER_HUB {
            match self.path.strip_prefix("library/") {
                Some(rest) if !rest.contains('/') => rest.to_string(),
                _ => self.path.clone(),
            }
        } else {
            self.repository()
        }
    }

    /// The name with tag as Docker shows it, e.g. `app:1` (a `RepoTags` entry).
    pub fn familiar_name(&self) -> String {
        format!("{}:{}", self.familiar_repository(), self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> ImageRef {
        ImageRef::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn normalises_like_docker() {
        let cases = [
            ("app:1", "docker.io/library/app:1", "app:1"),
            ("app", "docker.io/library/app:latest", "app:latest"),
            (
                "docker.io/library/app:1",
                "docker.io/library/app:1",
                "app:1",
            ),
            (
                "index.docker.io/library/app:1",
                "docker.io/library/app:1",
                "app:1",
            ),
            ("user/app:v2.0", "docker.io/user/app:v2.0", "user/app:v2.0"),
            (
                "docker.io/user/app",
                "docker.io/user/app:latest",
                "user/app:latest",
            ),
            ("localhost/app:x", "localhost/app:x", "localhost/app:x"),
            (
                "localhost:5000/a/b:c",
                "localhost:5000/a/b:c",
                "localhost:5000/a/b:c",
            ),
            (
                "ghcr.io/org/my-app_x:1",
                "ghcr.io/org/my-app_x:1",
                "ghcr.io/org/my-app_x:1",
            ),
            (
                "docker.io/library/a/b:1",
                "docker.io/library/a/b:1",
                "library/a/b:1",
            ),
        ];
        for (input, full, familiar) in cases {
            let parsed = r(input);
            assert_eq!(parsed.full_name(), full, "{input}");
            assert_eq!(parsed.familiar_name(), familiar, "{input}");
        }
        assert_eq!(r("registry:5000/app").tag(), "latest");
        assert_eq!(r("registry:5000/app").repository(), "registry:5000/app");
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "app:",
            "App:1",
            "app@sha256:abcd",
            "app:.x",
            "-app:1",
            "a//b:1",
            "app:1:2",
            "a b:1",
            "app/:1",
        ] {
            let err = ImageRef::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("{bad:?}")), "{err}");
        }
    }
}
