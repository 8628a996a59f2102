//! The HTTP side: transport choice, authentication, retries, error mapping.
//!
//! Why not `oci-client`: its requests cannot be retried, its errors drop the
//! HTTP status for most failures (which `kiln` must print), monolithic vs
//! chunked upload is a client-wide switch rather than per blob, a
//! cross-repository mount asks the token service for the target repository's
//! scope only (so token-auth registries never honour the mount), its basic
//! auth "login" never checks the password, and manifests are read without a
//! size limit. Those are most of what a pull/push needs, so the protocol is
//! spoken here directly, on `reqwest`'s blocking client (which owns the
//! tokio runtime), with `oci-spec` for the manifest types.

use std::collections::HashMap;
use std::io::Read;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::StatusCode;
use reqwest::blocking::{RequestBuilder, Response};
use reqwest::header::{AUTHORIZATION, WWW_AUTHENTICATE};

use crate::auth::{Challenge, TokenCache, TokenResponse};
use crate::credentials::{self, Credential};
use crate::error::{RegistryError, Result, chain, registry_message};
use crate::net::Timeouts;
use crate::reference::{api_host, normalize_registry};

/// Options for [`Client::new`].
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Registries (`HOST[:PORT]`) spoken to over plain HTTP. Loopback
    /// registries (`localhost`, `127.0.0.0/8`, `::1`) always are, as with
    /// Docker.
    pub insecure_registries: Vec<String>,
    /// Extra CA certificates (PEM) trusted besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// Docker config directory for credentials; default `$DOCKER_CONFIG`,
    /// else `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
    /// Blobs transferred at once.
    pub max_concurrent: usize,
    /// Blobs larger than this are uploaded in chunks (PATCH); smaller ones
    /// with a single PUT.
    pub monolithic_threshold: u64,
    /// Chunk size for chunked uploads.
    pub chunk_size: usize,
    /// Retries after a dropped connection, a 5xx or a 429 (so
    /// `retries + 1` attempts in all), with exponential backoff.
    pub retries: u32,
    /// First backoff delay; doubled after each retry, capped at 10 s.
    pub retry_delay: Duration,
    /// Connect, no-progress and minimum-rate timeouts of every request
    /// (see [`crate::net`]); a stalled request is retried like a dropped
    /// connection.
    pub timeouts: Timeouts,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            insecure_registries: Vec::new(),
            ca_file: None,
            docker_config_dir: None,
            max_concurrent: 3,
            // Each request costs the registry a round of its own (distribution reopens
            // the upload and its hash state per PATCH): 16 MiB chunks made a 200 MiB
            // upload take 2.6 s against 1.4 s in one PUT. Big pieces, streamed from
            // the file; a failed one is sent again whole.
            monolithic_threshold: 256 << 20,
            chunk_size: 256 << 20,
            retries: 3,
            retry_delay: Duration::from_millis(500),
            timeouts: Timeouts::default(),
        }
    }
}

/// A registry client. Cheap to share between threads; keeps learned
/// challenges and bearer tokens (per registry and scope) for its lifetime.
pub struct Client {
    pub(crate) http: reqwest::blocking::Client,
    pub(crate) opts: ClientOptions,
    state: Mutex<State>,
    /// Held while fetching a token, so parallel blob transfers that all
    /// find the cache empty fetch it once.
    token_fetch: Mutex<()>,
}

#[derive(Default)]
struct State {
    /// Credentials per registry: `None` = looked up, nothing configured.
    creds: HashMap<String, Option<Credential>>,
    /// The challenge each registry answered with, once known.
    challenges: HashMap<String, Challenge>,
    tokens: TokenCache,
}

/// What a request is for: names the operation in errors and says which
/// token scopes it needs.
pub(crate) struct Ctx<'a> {
    pub action: &'static str,
    pub reference: String,
    pub registry: &'a str,
    pub scopes: Vec<String>,
    /// The client's timeouts, to watch bodies and name stalls in errors.
    pub timeouts: Timeouts,
}

impl Ctx<'_> {
    pub(crate) fn http_error(&self, status: u16, body: &[u8]) -> RegistryError {
        RegistryError::Http {
            action: self.action,
            reference: self.reference.clone(),
            status,
            message: registry_message(status, body),
        }
    }

    pub(crate) fn stalled(&self, detail: String) -> RegistryError {
        RegistryError::Stalled {
            action: self.action,
            reference: self.reference.clone(),
            registry: self.registry.to_owned(),
            attempts: 1,
            detail,
        }
    }

    /// A failed request or body read: [`RegistryError::Stalled`] if it timed
    /// out, [`RegistryError::Tls`] if the TLS handshake was refused, else
    /// [`RegistryError::Transport`].
    pub(crate) fn transport(&self, e: &(dyn std::error::Error + 'static)) -> RegistryError {
        if let Some(detail) = self.timeouts.stalled(e) {
            return self.stalled(detail);
        }
        if let Some(detail) = crate::net::tls_refusal(e) {
            return RegistryError::Tls {
                action: self.action,
                reference: self.reference.clone(),
                registry: self.registry.to_owned(),
                detail,
            };
        }
        RegistryError::Transport {
            action: self.action,
            reference: self.reference.clone(),
            registry: self.registry.to_owned(),
            attempts: 1,
            detail: chain(e),
        }
    }
}

/// Scope for pulling from `repo`.
pub(crate) fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// Scope for pushing to `repo`.
pub(crate) fn push_scope(repo: &str) -> String {
    format!("repository:{repo}:pull,push")
}

impl Client {
    /// Build a client. Fails only if the CA file is unreadable or invalid.
    pub fn new(opts: ClientOptions) -> Result<Client> {
        // reqwest is built without a default crypto provider: ring builds
        // faster than aws-lc. Installing twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Layers can take minutes, so no total timeout: a peer must keep
        // the transfer moving instead (see `net`).
        let mut builder = opts
            .timeouts
            .apply(reqwest::blocking::Client::builder())
            .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
            .tcp_keepalive(Duration::from_secs(30))
            .pool_max_idle_per_host(opts.max_concurrent.max(1) * 2);
        if let Some(path) = &opts.ca_file {
            let config_err = |detail: String| RegistryError::Config {
                detail,
                path: Some(path.clone()),
            };
            let pem = std::fs::read(path)
                .map_err(|e| config_err(format!("cannot read CA file {}: {e}", path.display())))?;
            use rustls::pki_types::{CertificateDer, pem::PemObject};
            let certs = CertificateDer::pem_slice_iter(&pem)
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(|e| {
                    config_err(format!(
                        "CA file {} is not valid PEM: {}",
                        path.display(),
                        chain(&e)
                    ))
                })?;
            if certs.is_empty() {
                return Err(config_err(format!(
                    "CA file {} holds no certificates",
                    path.display()
                )));
            }
            // The platform's roots and these; a registry whose own certificate is one
            // of these is trusted too, as Docker does (see `tls`).
            let tls = crate::tls::client_config(certs).map_err(|e| {
                config_err(format!(
                    "CA file {}: cannot use its certificates: {e}",
                    path.display()
                ))
            })?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().map_err(|e| RegistryError::Config {
            detail: format!("cannot build the HTTP client: {}", chain(&e)),
            path: None,
        })?;
        Ok(Client {
            http,
            opts,
            state: Mutex::new(State::default()),
            token_fetch: Mutex::new(()),
        })
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.opts
    }

    /// Use `credential` for `registry` instead of looking in the docker
    /// config (e.g. for `--creds`, or right after a login).
    pub fn set_credential(&self, registry: &str, credential: Option<Credential>) {
        let mut st = self.state.lock().unwrap();
        let registry = normalize_registry(registry);
        st.creds.insert(registry.clone(), credential);
        st.challenges.remove(&registry);
        st.tokens = TokenCache::default();
    }

    /// Whether `registry` is spoken to over plain HTTP.
    pub fn is_plain_http(&self, registry: &str) -> bool {
        let host = host_of(registry);
        if host.eq_ignore_ascii_case("localhost")
            || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
        {
            return true;
        }
        self.opts
            .insecure_registries
            .iter()
            .map(|r| normalize_registry(r))
            .any(|r| r == registry || r == host)
    }

    /// `scheme://host` of a registry's API.
    pub(crate) fn base_url(&self, registry: &str) -> String {
        let scheme = if self.is_plain_http(registry) {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{}", api_host(registry))
    }

    fn credential(&self, registry: &str) -> Result<Option<Credential>> {
        if let Some(c) = self.state.lock().unwrap().creds.get(registry) {
            return Ok(c.clone());
        }
        let c = credentials::load(self.opts.docker_config_dir.as_deref(), registry)?;
        self.state
            .lock()
            .unwrap()
            .creds
            .insert(registry.to_owned(), c.clone());
        Ok(c)
    }

    /// The Authorization header for a request, if the registry asked for
    /// one (fetching a token if needed).
    fn auth_header(&self, ctx: &Ctx) -> Result<Option<String>> {
        let challenge = self
            .state
            .lock()
            .unwrap()
            .challenges
            .get(ctx.registry)
            .cloned();
        let Some(challenge) = challenge else {
            return Ok(None);
        };
        match challenge {
            Challenge::Basic => Ok(match self.credential(ctx.registry)? {
                Some(Credential::Basic { username, password }) => Some(basic(&username, &password)),
                _ => None,
            }),
            Challenge::Bearer { realm, service, .. } => {
                let scope_key = ctx.scopes.join(" ");
                let cached = || {
                    self.state
                        .lock()
                        .unwrap()
                        .tokens
                        .get(ctx.registry, &scope_key)
                };
                if let Some(t) = cached() {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let _fetching = self.token_fetch.lock().unwrap();
                if let Some(t) = cached() {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let cred = self.credential(ctx.registry)?;
                let (token, ttl) =
                    self.fetch_token(ctx, &realm, service.as_deref(), cred.as_ref())?;
                self.state
                    .lock()
                    .unwrap()
                    .tokens
                    .put(ctx.registry, &scope_key, token.clone(), ttl);
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    /// Get a bearer token from the token service at `realm` for the
    /// context's scopes.
    fn fetch_token(
        &self,
        ctx: &Ctx,
        realm: &str,
        service: Option<&str>,
        cred: Option<&Credential>,
    ) -> Result<(String, Duration)> {
        let mut url = reqwest::Url::parse(realm).map_err(|e| RegistryError::Auth {
            action: ctx.action,
            reference: ctx.reference.clone(),
            detail: format!("registry sent an invalid token realm {realm:?}: {e}"),
        })?;
        let req = match cred {
            Some(Credential::IdentityToken(refresh)) => {
                // OAuth2 refresh-token grant, as docker does with an
                // identity token.
                let mut form = reqwest::Url::parse("http://form.invalid/").expect("valid URL");
                {
                    let mut q = form.query_pairs_mut();
                    q.append_pair("grant_type", "refresh_token")
                        .append_pair("refresh_token", refresh)
                        .append_pair("client_id", "kiln");
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    if !ctx.scopes.is_empty() {
                        q.append_pair("scope", &ctx.scopes.join(" "));
                    }
                }
                self.http
                    .post(url)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .body(form.query().unwrap_or("").to_owned())
            }
            other => {
                {
                    let mut q = url.query_pairs_mut();
                    if let Some(s) = service {
                        q.append_pair("service", s);
                    }
                    for s in &ctx.scopes {
                        q.append_pair("scope", s);
                    }
                    if let Some(Credential::Basic { username, .. }) = other {
                        q.append_pair("account", username);
                    }
                }
                let req = self.http.get(url);
                match other {
                    Some(Credential::Basic { username, password }) => {
                        req.header(AUTHORIZATION, basic(username, password))
                    }
                    _ => req,
                }
            }
        };
        let resp = req.send().map_err(|e| ctx.transport(&e))?;
        let status = resp.status();
        let body = read_capped(ctx, resp, 1 << 20).map_err(|e| ctx.transport(&e))?;
        if !status.is_success() {
            let mut message = registry_message(status.as_u16(), &body);
            message = format!("token service {realm}: {message}");
            return Err(RegistryError::Http {
                action: ctx.action,
                reference: ctx.reference.clone(),
                status: status.as_u16(),
                message,
            });
        }
        serde_json::from_slice::<TokenResponse>(&body)
            .ok()
            .and_then(TokenResponse::into_token)
            .ok_or_else(|| RegistryError::Auth {
                action: ctx.action,
                reference: ctx.reference.clone(),
                detail: format!("token service {realm} answered without a token"),
            })
    }

    /// Send a request built by `build`, authenticating as the registry
    /// demands: on a 401 with a challenge, learn it, get a token and resend
    /// once. Does not check the final status. `build` may be called twice.
    pub(crate) fn send(
        &self,
        ctx: &Ctx,
        build: &dyn Fn(&reqwest::blocking::Client) -> RequestBuilder,
    ) -> Result<Response> {
        let mut challenged = false;
        loop {
            let mut req = build(&self.http);
            let sent = self.auth_header(ctx)?;
            if let Some(h) = &sent {
                req = req.header(AUTHORIZATION, h);
            }
            let req = req.build().map_err(|e| ctx.transport(&e))?;
            // Uploads carry their own total deadline (see `net`).
            let deadline = req.timeout().copied();
            let resp = self.http.execute(req).map_err(|e| match deadline {
                Some(d) if e.is_timeout() && !e.is_connect() => {
                    ctx.stalled(format!("request not done within {d:.1?}"))
                }
                _ => ctx.transport(&e),
            })?;
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged {
                let challenge = challenge_of(ctx, &resp)?;
                if let Some(ch) = challenge {
                    let mut st = self.state.lock().unwrap();
                    // Drop the token only if it is the one refused: a
                    // parallel request may have cached a fresh one since.
                    if let Some(t) = sent.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
                        st.tokens.forget_if(ctx.registry, &ctx.scopes.join(" "), t);
                    }
                    st.challenges.insert(ctx.registry.to_owned(), ch);
                    challenged = true;
                    continue;
                }
            }
            return Ok(resp);
        }
    }

    /// `send`, then fail unless the status is one of `ok`.
    pub(crate) fn send_expect(
        &self,
        ctx: &Ctx,
        ok: &[StatusCode],
        build: &dyn Fn(&reqwest::blocking::Client) -> RequestBuilder,
    ) -> Result<Response> {
        let resp = self.send(ctx, build)?;
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        Err(self.error_from(ctx, resp))
    }

    /// Run `op` with retries on retryable errors, backing off
    /// exponentially. A [`RegistryError::Transport`] reports the attempts.
    pub(crate) fn with_retries<T>(&self, mut op: impl FnMut() -> Result<T>) -> Result<T> {
        let mut attempt = 0u32;
        let mut delay = self.opts.retry_delay;
        loop {
            attempt += 1;
            match op() {
                Err(e) if e.is_retryable() && attempt <= self.opts.retries => {
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(RegistryError::Transport {
                    action,
                    reference,
                    registry,
                    detail,
                    ..
                }) => {
                    return Err(RegistryError::Transport {
                        action,
                        reference,
                        registry,
                        attempts: attempt,
                        detail,
                    });
                }
                Err(RegistryError::Stalled {
                    action,
                    reference,
                    registry,
                    detail,
                    ..
                }) => {
                    return Err(RegistryError::Stalled {
                        action,
                        reference,
                        registry,
                        attempts: attempt,
                        detail,
                    });
                }
                other => return other,
            }
        }
    }

    /// Check `username`/`password` against `registry` (as `docker login`
    /// does: `GET /v2/` with basic auth, or a token request with them when
    /// the registry uses a token service). On success the client uses them
    /// for that registry from then on. Saving them is
    /// [`credentials::save`]'s job.
    pub fn check_login(&self, registry: &str, username: &str, password: &str) -> Result<()> {
        let registry = normalize_registry(registry);
        let ctx = Ctx {
            action: "login to",
            reference: registry.clone(),
            registry: &registry,
            scopes: Vec::new(),
            timeouts: self.opts.timeouts,
        };
        let url = format!("{}/v2/", self.base_url(&registry));
        let resp = self.with_retries(|| {
            let r = self.http.get(&url).send().map_err(|e| ctx.transport(&e))?;
            if r.status().is_server_error() {
                return Err(error_from(&ctx, r));
            }
            Ok(r)
        })?;
        let cred = Credential::Basic {
            username: username.to_owned(),
            password: password.to_owned(),
        };
        match resp.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED => match challenge_of(&ctx, &resp)? {
                Some(Challenge::Bearer { realm, service, .. }) => {
                    let (token, _) =
                        self.fetch_token(&ctx, &realm, service.as_deref(), Some(&cred))?;
                    let r = self
                        .http
                        .get(&url)
                        .header(AUTHORIZATION, format!("Bearer {token}"))
                        .send()
                        .map_err(|e| ctx.transport(&e))?;
                    if !r.status().is_success() {
                        return Err(error_from(&ctx, r));
                    }
                }
                Some(Challenge::Basic) => {
                    let r = self
                        .http
                        .get(&url)
                        .header(AUTHORIZATION, basic(username, password))
                        .send()
                        .map_err(|e| ctx.transport(&e))?;
                    if !r.status().is_success() {
                        return Err(error_from(&ctx, r));
                    }
                }
                None => return Err(error_from(&ctx, resp)),
            },
            _ => return Err(error_from(&ctx, resp)),
        }
        self.set_credential(&registry, Some(cred));
        Ok(())
    }
}

/// The challenge of a 401 response: `None` if it has no `WWW-Authenticate`
/// header, an error naming the registry and the header if kiln cannot answer
/// it (an unknown scheme, a bearer challenge without a realm).
fn challenge_of(ctx: &Ctx, resp: &Response) -> Result<Option<Challenge>> {
    let Some(header) = resp.headers().get(WWW_AUTHENTICATE) else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(header.as_bytes());
    if let Some(c) = Challenge::parse(&text) {
        return Ok(Some(c));
    }
    let mut shown: String = text.chars().take(200).collect();
    if shown.len() < text.len() {
        shown.push_str("...");
    }
    Err(RegistryError::Auth {
        action: ctx.action,
        reference: ctx.reference.clone(),
        detail: format!(
            "registry {} returned an unsupported WWW-Authenticate challenge: {shown:?} \
             (kiln answers Basic, and Bearer with a realm)",
            ctx.registry
        ),
    })
}

/// Turn an unexpected response into [`RegistryError::Http`], reading (a
/// bounded amount of) its body for the registry's message.
pub(crate) fn error_from(ctx: &Ctx, resp: Response) -> RegistryError {
    let status = resp.status().as_u16();
    let body = read_capped(ctx, resp, 64 << 10).unwrap_or_default();
    ctx.http_error(status, &body)
}

impl Client {
    /// [`error_from`], plus a hint on what to do about a 401/403 during a
    /// pull or push.
    pub(crate) fn error_from(&self, ctx: &Ctx, resp: Response) -> RegistryError {
        let mut e = error_from(ctx, resp);
        if let RegistryError::Http {
            status: status @ (401 | 403),
            message,
            ..
        } = &mut e
            && ctx.action != "login to"
        {
            // Looked up here if no challenge made the client read them yet,
            // so saved credentials are never reported missing.
            let known = self.credential(ctx.registry).ok().flatten();
            let hint = match known {
                Some(_) if *status == 401 => {
                    format!("the credentials for {} were refused", ctx.registry)
                }
                Some(_) => "access denied for these credentials".to_owned(),
                _ => format!("no credentials for {0}; run `kiln login {0}`", ctx.registry),
            };
            message.push_str(&format!(" ({hint})"));
        }
        e
    }
}

/// Read at most `cap` bytes of a body (the rest is dropped), under the
/// minimum-rate rule.
pub(crate) fn read_capped(ctx: &Ctx, resp: Response, cap: u64) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    ctx.timeouts.watch(resp).take(cap).read_to_end(&mut body)?;
    Ok(body)
}

fn basic(username: &str, password: &str) -> String {
    format!(
        "Basic {}",
        STANDARD.encode(format!("{username}:{password}"))
    )
}

/// The host part of `host[:port]` / `[v6]:port`.
fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match registry.rsplit_once(':') {
        Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
        _ => registry,
    }
}

/// Run `f` over `items` on up to `workers` threads. Stops handing out work
/// after the first error, which is returned; otherwise the results in
/// order.
pub(crate) fn run_parallel<T: Sync, R: Send>(
    workers: usize,
    items: &[T],
    f: impl Fn(&T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let first_err: Mutex<Option<RegistryError>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..workers.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                loop {
                    if failed.load(Ordering::Relaxed) {
                        return;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { return };
                    match f(item) {
                        Ok(r) => results.lock().unwrap()[i] = Some(r),
                        Err(e) => {
                            failed.store(true, Ordering::Relaxed);
                            first_err.lock().unwrap().get_or_insert(e);
                            return;
                        }
                    }
                }
            });
        }
    });
    if let Some(e) = first_err.into_inner().unwrap() {
        return Err(e);
    }
    Ok(results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server on 127.0.0.1 answering every request with a 401 carrying
    /// `challenge` (if any); at most 10 connections. Returns its host.
    fn unauthorized(challenge: Option<&'static str>) -> String {
        let header = challenge
            .map(|c| format!("WWW-Authenticate: {c}\r\n"))
            .unwrap_or_default();
        let reply = format!(
            "HTTP/1.1 401 Unauthorized\r\n{header}Content-Length: 0\r\nConnection: close\r\n\r\n"
        );
        format!("127.0.0.1:{}", counting_server(reply.into_bytes()).0)
    }

    /// Fetches a manifest from `host` with credentials saved for it.
    fn fetch_with_saved_credentials(host: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        credentials::save(Some(dir.path()), host, "kiln", "s3cret").unwrap();
        let c = Client::new(ClientOptions {
            docker_config_dir: Some(dir.path().to_path_buf()),
            retries: 0,
            ..Default::default()
        })
        .unwrap();
        let r = crate::Reference::parse(&format!("{host}/app:1")).unwrap();
        let Err(e) = c.fetch_manifest(&r, "1") else {
            panic!("a 401 must fail")
        };
        e.to_string()
    }

    #[test]
    fn issue9_unsupported_challenge_is_named_not_missing_credentials() {
        let host = unauthorized(Some(r#"Negotiate abc, Bearer service="x""#));
        let e = fetch_with_saved_credentials(&host);
        assert_eq!(
            e,
            format!(
                "pull {host}/app:1: authentication failed: registry {host} returned an \
                 unsupported WWW-Authenticate challenge: \"Negotiate abc, Bearer service=\\\"x\\\"\" \
                 (kiln answers Basic, and Bearer with a realm)"
            )
        );
        let host = unauthorized(Some(r#"Bearer service="no realm""#));
        let e = fetch_with_saved_credentials(&host);
        assert!(e.contains("unsupported WWW-Authenticate challenge"), "{e}");
        // No challenge at all: the saved credentials are not reported missing.
        let host = unauthorized(None);
        let e = fetch_with_saved_credentials(&host);
        assert!(e.contains("HTTP 401"), "{e}");
        assert!(
            e.contains(&format!("the credentials for {host} were refused")),
            "{e}"
        );
    }

    #[test]
    fn plain_http_for_loopback_and_insecure() {
        let c = Client::new(ClientOptions {
            insecure_registries: vec!["reg.lan:5000".into(), "other.lan".into()],
            ..Default::default()
        })
        .unwrap();
        for r in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.3.4.5",
            "[::1]:5000",
            "reg.lan:5000",
            "other.lan",
            "other.lan:8080",
        ] {
            assert!(c.is_plain_http(r), "{r}");
        }
        for r in [
            "reg.lan",
            "reg.lan:5001",
            "docker.io",
            "10.0.0.1:5000",
            "[::2]:5000",
        ] {
            assert!(!c.is_plain_http(r), "{r}");
        }
        assert_eq!(c.base_url("docker.io"), "https://registry-1.docker.io");
        assert_eq!(c.base_url("127.0.0.1:5000"), "http://127.0.0.1:5000");
    }

    #[test]
    fn bad_ca_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.pem");
        std::fs::write(&p, "not pem").unwrap();
        let opts = |p: &std::path::Path| ClientOptions {
            ca_file: Some(p.to_path_buf()),
            ..Default::default()
        };
        let e = Client::new(opts(&p)).err().unwrap().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        let e = Client::new(opts(&dir.path().join("missing.pem")))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn parallel_runs_all_or_stops() {
        let items: Vec<u32> = (0..20).collect();
        let out = run_parallel(3, &items, |i| Ok(i * 2)).unwrap();
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        let e = run_parallel(3, &items, |i| {
            if *i == 5 {
                Err(RegistryError::Config {
                    detail: "five".into(),
                    path: None,
                })
            } else {
                Ok(())
            }
        })
        .unwrap_err();
        assert!(e.to_string().contains("five"));
        assert!(
            run_parallel(3, &Vec::<u32>::new(), |_| Ok(()))
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn retries_then_reports_attempts() {
        let c = Client::new(ClientOptions {
            retries: 2,
            retry_delay: Duration::from_millis(1),
            ..Default::default()
        })
        .unwrap();
        let mut n = 0;
        let e = c
            .with_retries(|| -> Result<()> {
                n += 1;
                Err(RegistryError::Transport {
                    action: "pull",
                    reference: "x".into(),
                    registry: "r".into(),
                    attempts: 1,
                    detail: "connection refused".into(),
                })
            })
            .unwrap_err();
        assert_eq!(n, 3);
        assert!(e.to_string().contains("gave up after 3 attempt(s)"), "{e}");
        let mut n = 0;
        let e = c
            .with_retries(|| -> Result<()> {
                n += 1;
                Err(RegistryError::Http {
                    action: "pull",
                    reference: "x".into(),
                    status: 404,
                    message: String::new(),
                })
            })
            .unwrap_err();
        assert_eq!((n, e.status()), (1, Some(404)));
    }

    /// A server on 127.0.0.1 that reads each connection's first bytes and answers
    /// them with `reply` (nothing: it hangs up), counting the connections (at most 10).
    fn counting_server(reply: Vec<u8>) -> (u16, std::sync::Arc<AtomicUsize>) {
        use std::io::Write;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let count = std::sync::Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().take(10) {
                let Ok(mut conn) = conn else { return };
                seen.fetch_add(1, Ordering::SeqCst);
                let mut head = [0u8; 4096];
                let _ = conn.read(&mut head);
                let _ = conn.write_all(&reply);
            }
        });
        (port, count)
    }

    /// A refused TLS handshake is reported as such after one attempt; a connection
    /// dropped during the handshake is still retried.
    #[test]
    fn a_refused_tls_handshake_is_not_retried() {
        let c = Client::new(ClientOptions {
            retries: 3,
            retry_delay: Duration::from_millis(1),
            ..Default::default()
        })
        .unwrap();
        // 0.0.0.0 reaches this host, and is not a loopback name: kiln speaks TLS to it.
        // The server answers the TLS hello in plain HTTP.
        let (port, count) = counting_server(b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec());
        let host = format!("0.0.0.0:{port}");
        assert!(!c.is_plain_http(&host));
        let r = crate::Reference::parse(&format!("{host}/app:1")).unwrap();
        let e = c.fetch_manifest(&r, "1").err().expect("no TLS there");
        assert!(matches!(e, RegistryError::Tls { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("TLS handshake with registry {host} failed: ")),
            "{msg}"
        );
        assert!(msg.contains("--registry-ca"), "{msg}");
        assert_eq!(count.load(Ordering::SeqCst), 1, "one attempt: {msg}");
        // A server that hangs up mid-handshake may be restarting: tried again.
        let (port, count) = counting_server(Vec::new());
        let r = crate::Reference::parse(&format!("0.0.0.0:{port}/app:1")).unwrap();
        let e = c.fetch_manifest(&r, "1").err().expect("no TLS there");
        assert!(matches!(e, RegistryError::Transport { .. }), "{e:?}");
        assert!(e.to_string().contains("gave up after 4 attempt(s)"), "{e}");
        assert_eq!(count.load(Ordering::SeqCst), 4);
    }
}
