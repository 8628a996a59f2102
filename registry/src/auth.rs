//! `WWW-Authenticate` challenges and cached bearer tokens.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A parsed `WWW-Authenticate` challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Challenge {
    /// `Basic realm="..."`: send credentials with every request.
    Basic,
    /// `Bearer realm=...,service=...,scope=...`: fetch a token from `realm`.
    Bearer {
        /// Token endpoint URL.
        realm: String,
        /// The `service` parameter to pass back, if given.
        service: Option<String>,
        /// The scope the registry asked for, if given.
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parse a `WWW-Authenticate` header value. Only the first challenge is
    /// considered; unknown schemes give `None`.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header
            .split_once(|c: char| c.is_ascii_whitespace())
            .unwrap_or((header, ""));
        let params = parse_params(rest);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.clone())
        };
        if scheme.eq_ignore_ascii_case("basic") {
            Some(Challenge::Basic)
        } else if scheme.eq_ignore_ascii_case("bearer") {
            Some(Challenge::Bearer {
                realm: get("realm").filter(|r| !r.is_empty())?,
                service: get("service"),
                scope: get("scope"),
            })
        } else {
            None
        }
    }
}

/// `k1="v, 1", k2=v2` → pairs; quoted values may contain commas and
/// backslash escapes.
fn parse_params(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c == ',' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if key.is_empty() && chars.peek().is_none() {
            return out;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'=') {
            chars.next();
            while chars.peek().is_some_and(|c| c.is_whitespace()) {
                chars.next();
            }
            if chars.peek() == Some(&'"') {
                chars.next();
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => break,
                        c => value.push(c),
                    }
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
                value = value.trim().to_owned();
            }
        }
        let key = key.trim().to_owned();
        if !key.is_empty() {
            out.push((key, value));
        }
    }
}

/// A token endpoint's JSON answer.
#[derive(serde::Deserialize)]
pub(crate) struct TokenResponse {
    #[serde(default)]
    token: String,
    #[serde(default)]
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// The token (`token`, or OAuth2's `access_token`) and how long to keep
    /// it: the advertised lifetime minus a margin, at least a minute as the
    /// spec's default.
    pub(crate) fn into_token(self) -> Option<(String, Duration)> {
        let token = if self.token.is_empty() {
            self.access_token
        } else {
            self.token
        };
        if token.is_empty() {
            return None;
        }
        let secs = self.expires_in.unwrap_or(60).max(60);
        Some((token, Duration::from_secs(secs - 10)))
    }
}

/// Bearer tokens per (registry, scope), reused until they expire.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: HashMap<(String, String), (String, Instant)>,
}

impl TokenCache {
    pub(crate) fn get(&self, registry: &str, scope: &str) -> Option<String> {
        let (tok, until) = self.tokens.get(&(registry.to_owned(), scope.to_owned()))?;
        (Instant::now() < *until).then(|| tok.clone())
    }

    pub(crate) fn put(&mut self, registry: &str, scope: &str, token: String, ttl: Duration) {
        self.tokens.insert(
            (registry.to_owned(), scope.to_owned()),
            (token, Instant::now() + ttl),
        );
    }

    /// Forget the token for (registry, scope) if it is `token`.
    pub(crate) fn forget_if(&mut self, registry: &str, scope: &str, token: &str) {
        let key = (registry.to_owned(), scope.to_owned());
        if self.tokens.get(&key).is_some_and(|(t, _)| t == token) {
            self.tokens.remove(&key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer  Realm = "http://127.0.0.1:9/t" , error="invalid_token""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:9/t".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm=https://x/t,service=svc"#),
            Some(Challenge::Bearer {
                realm: "https://x/t".into(),
                service: Some("svc".into()),
                scope: None,
            })
        );
        assert_eq!(
            Challenge::parse(r#"Bearer realm="a\"b",service="""#),
            Some(Challenge::Bearer {
                realm: "a\"b".into(),
                service: Some(String::new()),
                scope: None,
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Basic"), Some(Challenge::Basic));
        assert_eq!(Challenge::parse(r#"Bearer service="x""#), None);
        assert_eq!(Challenge::parse("Negotiate abc"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn token_responses() {
        let t: TokenResponse = serde_json::from_str(r#"{"token":"a","expires_in":300}"#).unwrap();
        assert_eq!(t.into_token(), Some(("a".into(), Duration::from_secs(290))));
        let t: TokenResponse = serde_json::from_str(r#"{"access_token":"b"}"#).unwrap();
        assert_eq!(t.into_token(), Some(("b".into(), Duration::from_secs(50))));
        let t: TokenResponse = serde_json::from_str(r#"{}"#).unwrap();
        assert_eq!(t.into_token(), None);
        let mut c = TokenCache::default();
        c.put("r", "s", "t".into(), Duration::from_secs(60));
        assert_eq!(c.get("r", "s").as_deref(), Some("t"));
        assert_eq!(c.get("r", "other"), None);
        c.put("r", "x", "old".into(), Duration::ZERO);
        assert_eq!(c.get("r", "x"), None);
        c.forget_if("r", "s", "other");
        assert_eq!(c.get("r", "s").as_deref(), Some("t"));
        c.forget_if("r", "s", "t");
        assert_eq!(c.get("r", "s"), None);
    }
}
