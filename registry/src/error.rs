//! The crate's error type. Every variant renders as one line that names the
//! image reference (or registry) concerned, so the CLI can print it as is.

use std::path::PathBuf;

use kiln_cache::CacheError;

/// Result alias used throughout `kiln-registry`.
pub type Result<T, E = RegistryError> = std::result::Result<T, E>;

/// Everything that can go wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// A blob the store lacks, and no registry is known to hold it.
    #[error(
        "blob {digest} is not in the store and no registry is known to hold it: pull its image again"
    )]
    BlobUnavailable {
        /// The blob.
        digest: String,
    },

    /// A blob the store lacks could not be made again from what the store keeps
    /// ([`crate::LocalBlobs`]).
    #[error("blob {digest}: {reason}")]
    LocalBlob {
        /// The blob.
        digest: String,
        /// Why.
        reason: String,
    },

    /// An image reference is outside Docker's grammar; `reason` is Docker's own
    /// message ("invalid reference format[: ...]").
    #[error("{input:?}: {reason}")]
    InvalidReference {
        /// The rejected input.
        input: String,
        /// Why.
        reason: String,
    },

    /// The registry answered with an HTTP error status.
    #[error("{action} {reference}: registry returned HTTP {status}{}", fmt_message(.message))]
    Http {
        /// What was being done ("pull", "push", "login to", ...).
        action: &'static str,
        /// The image reference or registry concerned.
        reference: String,
        /// The HTTP status code.
        status: u16,
        /// The registry's own message (from its error body), or empty.
        message: String,
    },

    /// The registry could not be reached, or the connection dropped.
    #[error(
        "{action} {reference}: cannot reach registry {registry} (gave up after {attempts} attempt(s)): {detail}"
    )]
    Transport {
        /// What was being done.
        action: &'static str,
        /// The image reference concerned.
        reference: String,
        /// The registry host.
        registry: String,
        /// How many attempts were made.
        attempts: u32,
        /// The underlying error chain, flattened to one line.
        detail: String,
    },

    /// The TLS handshake with the registry (or its token service) failed in a way
    /// another attempt cannot mend ([`crate::net::tls_refusal`]); not retried.
    #[error(
        "{action} {reference}: TLS handshake with registry {registry} failed: {detail} (trust its CA with --registry-ca, or, if it speaks plain HTTP, name it with --insecure-registry)"
    )]
    Tls {
        /// What was being done.
        action: &'static str,
        /// The image reference concerned.
        reference: String,
        /// The registry host.
        registry: String,
        /// rustls' words for it.
        detail: String,
    },

    /// The registry (or its token service) stopped sending or accepting
    /// data for longer than the network timeout, on every attempt.
    #[error(
        "{action} {reference}: registry {registry} stalled: {detail} (gave up after {attempts} attempt(s))"
    )]
    Stalled {
        /// What was being done.
        action: &'static str,
        /// The image reference concerned.
        reference: String,
        /// The registry host.
        registry: String,
        /// How many attempts were made.
        attempts: u32,
        /// What stalled and for how long (`no data for 30s`).
        detail: String,
    },

    /// Authentication with the registry or its token service failed.
    #[error("{action} {reference}: authentication failed: {detail}")]
    Auth {
        /// What was being done.
        action: &'static str,
        /// The image reference or registry concerned.
        reference: String,
        /// Details (token endpoint status and message, ...).
        detail: String,
    },

    /// A download stopped because its caller no longer wanted it.
    #[error("fetching blob {digest}: cancelled")]
    Cancelled {
        /// The blob.
        digest: String,
    },

    /// An index or manifest list has no image for the requested platform.
    #[error("pull {reference}: no image for platform {platform} (available: {available})")]
    NoMatchingPlatform {
        /// The image reference.
        reference: String,
        /// The requested platform.
        platform: String,
        /// The platforms the index offers, comma-separated.
        available: String,
    },

    /// Content fetched from a registry does not match its digest.
    #[error("{reference}: content of {what} hashes to {actual}, expected {expected}; refusing it")]
    DigestMismatch {
        /// The image reference.
        reference: String,
        /// What was fetched ("manifest", "blob").
        what: &'static str,
        /// The digest it was requested by.
        expected: String,
        /// What it hashes to.
        actual: String,
    },

    /// A manifest, index or config exceeds the size limit, or a blob is
    /// larger than its descriptor says.
    #[error("{reference}: {what} is larger than {limit} bytes; refusing it")]
    TooLarge {
        /// The image reference.
        reference: String,
        /// What was too large.
        what: String,
        /// The limit that was exceeded.
        limit: u64,
    },

    /// A manifest or index is malformed or of an unsupported kind.
    #[error("{reference}: invalid manifest: {reason}")]
    InvalidManifest {
        /// The image reference.
        reference: String,
        /// What is wrong.
        reason: String,
    },

    /// A layer cannot be expressed in the requested manifest format.
    #[error(
        "push {reference}: layer {digest} has media type {media_type}, which Docker schema 2 \
         cannot express; push in OCI format instead"
    )]
    UnsupportedInDockerFormat {
        /// The target reference.
        reference: String,
        /// The layer's digest.
        digest: String,
        /// Its media type.
        media_type: String,
    },

    /// The local store failed.
    #[error(transparent)]
    Store(#[from] CacheError),

    /// Reading or writing the docker config file (or a credential helper)
    /// failed.
    #[error("credentials for {registry}: {detail}")]
    Credentials {
        /// The registry concerned.
        registry: String,
        /// What went wrong, naming the file or helper.
        detail: String,
    },

    /// Client options are unusable (unreadable CA file, ...).
    #[error("registry client configuration: {detail}")]
    Config {
        /// What is wrong, naming the file concerned.
        detail: String,
        /// The file concerned, if any.
        path: Option<PathBuf>,
    },
}

fn fmt_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

impl RegistryError {
    /// Whether retrying the same operation might succeed (dropped connection,
    /// 5xx, 429).
    pub fn is_retryable(&self) -> bool {
        match self {
            RegistryError::Transport { .. } | RegistryError::Stalled { .. } => true,
            RegistryError::Http { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    /// The HTTP status, for [`RegistryError::Http`].
    pub fn status(&self) -> Option<u16> {
        match self {
            RegistryError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Flatten an error and its sources into one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let s_str = s.to_string();
        if !out.contains(&s_str) {
            out.push_str(": ");
            out.push_str(&s_str);
        }
        cur = s.source();
    }
    out
}

/// The registry's message from an OCI error body
/// (`{"errors":[{"code","message","detail"}]}`), else the body's first line
/// if it is short text, else empty.
pub(crate) fn registry_message(status: u16, body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Envelope {
        errors: Vec<Item>,
    }
    #[derive(serde::Deserialize)]
    struct Item {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let reason = reqwest::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("");
    let detail = if let Ok(env) = serde_json::from_slice::<Envelope>(body) {
        env.errors
            .iter()
            .map(|e| match (e.message.is_empty(), e.code.is_empty()) {
                (false, false) => format!("{} ({})", e.message, e.code),
                (false, true) => e.message.clone(),
                (true, _) => e.code.clone(),
            })
            .collect::<Vec<_>>()
            .join("; ")
    } else {
        let text = String::from_utf8_lossy(body);
        let line = text.lines().map(str::trim).find(|l| !l.is_empty());
        match line {
            Some(l) if l.len() <= 200 && !l.starts_with('<') => l.to_owned(),
            _ => String::new(),
        }
    };
    match (reason.is_empty(), detail.is_empty()) {
        (true, _) => detail,
        (false, true) => reason.to_owned(),
        (false, false) => format!("{reason}: {detail}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_error_is_one_clear_line() {
        let body = br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository"}]}]}"#;
        let e = RegistryError::Http {
            action: "pull",
            reference: "127.0.0.1:5000/app:1".into(),
            status: 401,
            message: registry_message(401, body),
        };
        assert_eq!(
            e.to_string(),
            "pull 127.0.0.1:5000/app:1: registry returned HTTP 401: Unauthorized: \
             authentication required (UNAUTHORIZED)"
        );
        assert!(!e.to_string().contains('\n'));
        assert!(!e.is_retryable());
    }

    #[test]
    fn messages_from_odd_bodies() {
        assert_eq!(registry_message(404, b""), "Not Found");
        assert_eq!(
            registry_message(500, b"\n  boom happened \nmore"),
            "Internal Server Error: boom happened"
        );
        assert_eq!(
            registry_message(502, b"<html><body>bad gateway</body></html>"),
            "Bad Gateway"
        );
        assert_eq!(
            registry_message(
                429,
                br#"{"errors":[{"code":"TOOMANYREQUESTS","message":""}]}"#
            ),
            "Too Many Requests: TOOMANYREQUESTS"
        );
        let e = RegistryError::Http {
            action: "push",
            reference: "r/x".into(),
            status: 503,
            message: String::new(),
        };
        assert_eq!(e.to_string(), "push r/x: registry returned HTTP 503");
        assert!(e.is_retryable());
    }
}
