//! Registry credentials in Docker's config file (`$DOCKER_CONFIG/config.json`,
//! default `~/.docker/config.json`): `auths` entries, a `credsStore` and
//! per-registry `credHelpers` (`docker-credential-<name>` programs).
//!
//! Lookups go through the `docker_credential` crate; `save` and `remove`
//! edit the file in place, keeping every other key, written atomically
//! (temp file + rename) with mode 0600, or talk to the configured helper.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use docker_credential::{CredentialRetrievalError, DockerCredential};
use serde_json::{Map, Value};

use crate::error::{RegistryError, Result};
use crate::reference::{DOCKER_HUB, normalize_registry};

/// A credential for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (or access token used as a password).
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`), exchanged at the
    /// registry's token endpoint.
    IdentityToken(String),
}

impl std::fmt::Debug for Credential {
    // Never print secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(***)"),
        }
    }
}

/// The docker config directory: `dir` if given, else `$DOCKER_CONFIG`, else
/// `~/.docker`.
pub fn config_dir(dir: Option<&Path>) -> Option<PathBuf> {
    if let Some(d) = dir {
        return Some(d.to_path_buf());
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        return Some(PathBuf::from(d));
    }
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker"))
}

/// The key Docker files a registry's credentials under
/// (`https://index.docker.io/v1/` for Docker Hub, else the host\[:port\]).
pub fn server_key(registry: &str) -> String {
    let r = normalize_registry(registry);
    if r == DOCKER_HUB {
        "https://index.docker.io/v1/".to_owned()
    } else {
        r
    }
}

fn err(registry: &str, detail: impl Into<String>) -> RegistryError {
    RegistryError::Credentials {
        registry: registry.to_owned(),
        detail: detail.into(),
    }
}

/// Look up the credential for `registry`. `Ok(None)` if there is no config
/// file or nothing configured for it; an error if the file is unreadable or
/// a helper fails.
pub fn load(dir: Option<&Path>, registry: &str) -> Result<Option<Credential>> {
    let Some(path) = config_dir(dir).map(|d| d.join("config.json")) else {
        return Ok(None);
    };
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(err(
                registry,
                format!("cannot read {}: {e}", path.display()),
            ));
        }
    };
    let key = server_key(registry);
    match docker_credential::get_credential_from_reader(io::BufReader::new(file), &key) {
        Ok(DockerCredential::UsernamePassword(username, password)) => {
            Ok(Some(Credential::Basic { username, password }))
        }
        Ok(DockerCredential::IdentityToken(t)) => Ok(Some(Credential::IdentityToken(t))),
        Err(CredentialRetrievalError::NoCredentialConfigured)
        | Err(CredentialRetrievalError::ConfigNotFound) => Ok(None),
        // A helper that has nothing for this registry exits non-zero with
        // "credentials not found in native keychain".
        Err(CredentialRetrievalError::HelperFailure { stdout, .. })
            if stdout.contains("credentials not found") =>
        {
            Ok(None)
        }
        Err(e) => Err(err(
            registry,
            format!("{} (from {})", one_line(&e.to_string()), path.display()),
        )),
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn read_config(path: &Path, registry: &str) -> Result<Map<String, Value>> {
    match fs::read(path) {
        Ok(bytes) if bytes.iter().all(u8::is_ascii_whitespace) => Ok(Map::new()),
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(Value::Object(m)) => Ok(m),
            _ => Err(err(
                registry,
                format!("{} is not a JSON object; fix or remove it", path.display()),
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Map::new()),
        Err(e) => Err(err(
            registry,
            format!("cannot read {}: {e}", path.display()),
        )),
    }
}

/// The helper that stores credentials for `key`, if any (`credHelpers`
/// first, then `credsStore`).
fn helper_for(config: &Map<String, Value>, key: &str) -> Option<String> {
    let from_helpers = config
        .get("credHelpers")
        .and_then(|h| h.get(key))
        .and_then(Value::as_str);
    from_helpers
        .or_else(|| config.get("credsStore").and_then(Value::as_str))
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn run_helper(helper: &str, verb: &str, input: &[u8], registry: &str) -> Result<()> {
    let name = format!("docker-credential-{helper}");
    let mut child = Command::new(&name)
        .arg(verb)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            err(
                registry,
                format!("cannot run credential helper {name}: {e}"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| err(registry, format!("cannot talk to {name}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| err(registry, format!("credential helper {name} failed: {e}")))?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        return Err(err(
            registry,
            format!("{name} {verb} failed: {}", one_line(&msg)),
        ));
    }
    Ok(())
}

/// Write `config` to `path` atomically with mode 0600.
fn write_config(path: &Path, config: &Map<String, Value>, registry: &str) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir)
        .map_err(|e| err(registry, format!("cannot create {}: {e}", dir.display())))?;
    let mut bytes = serde_json::to_vec_pretty(config).expect("a JSON map serializes");
    bytes.push(b'\n');
    let tmp = dir.join(format!(".config.json.{}.tmp", std::process::id()));
    let write = || -> io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        fs::File::open(dir)?.sync_all()
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(registry, format!("cannot write {}: {e}", path.display()))
    })
}

/// Save a user name and password for `registry` (as `docker login` does):
/// into the configured credential helper if there is one, else as a base64
/// `auth` entry in `auths`. Returns the config file path.
pub fn save(dir: Option<&Path>, registry: &str, username: &str, password: &str) -> Result<PathBuf> {
    let path = config_dir(dir)
        .ok_or_else(|| {
            err(
                registry,
                "no docker config directory: set DOCKER_CONFIG or HOME",
            )
        })?
        .join("config.json");
    let key = server_key(registry);
    let mut config = read_config(&path, registry)?;
    if let Some(helper) = helper_for(&config, &key) {
        let input = serde_json::json!({"ServerURL": key, "Username": username, "Secret": password});
        run_helper(&helper, "store", input.to_string().as_bytes(), registry)?;
        // Drop a stale plain-text entry, if any.
        if let Some(Value::Object(auths)) = config.get_mut("auths")
            && auths.remove(&key).is_some()
        {
            write_config(&path, &config, registry)?;
        }
        return Ok(path);
    }
    let auth = STANDARD.encode(format!("{username}:{password}"));
    let auths = config
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    auths
        .as_object_mut()
        .expect("just made an object")
        .insert(key, serde_json::json!({ "auth": auth }));
    write_config(&path, &config, registry)?;
    Ok(path)
}

/// Remove the credentials for `registry` (from `auths` and from its
/// credential helper). Returns whether anything was removed.
pub fn remove(dir: Option<&Path>, registry: &str) -> Result<bool> {
    let Some(path) = config_dir(dir).map(|d| d.join("config.json")) else {
        return Ok(false);
    };
    let key = server_key(registry);
    let mut config = read_config(&path, registry)?;
    let mut removed = false;
    if let Some(helper) = helper_for(&config, &key) {
        removed |= run_helper(&helper, "erase", key.as_bytes(), registry).is_ok();
    }
    if let Some(Value::Object(auths)) = config.get_mut("auths") {
        // Also entries spelled differently (`http://host`, `https://host/v2/`).
        let norm = normalize_registry(registry);
        let keys: Vec<String> = auths
            .keys()
            .filter(|k| **k == key || normalize_registry(k) == norm)
            .cloned()
            .collect();
        for k in keys {
            auths.remove(&k);
            removed = true;
        }
    }
    if removed {
        write_config(&path, &config, registry)?;
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn save_load_remove_keeps_other_keys() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path());
        assert_eq!(load(d, "127.0.0.1:5000").unwrap(), None);
        fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"other.io":{"auth":"eDp5"}},"detachKeys":"ctrl-x"}"#,
        )
        .unwrap();
        let path = save(d, "127.0.0.1:5000", "user", "p:ss").unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(
            load(d, "127.0.0.1:5000").unwrap(),
            Some(Credential::Basic {
                username: "user".into(),
                password: "p:ss".into()
            })
        );
        let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["detachKeys"], "ctrl-x");
        assert_eq!(v["auths"]["127.0.0.1:5000"]["auth"], "dXNlcjpwOnNz");
        assert_eq!(v["auths"]["other.io"]["auth"], "eDp5");

        // Docker Hub is filed under its legacy URL and found by any alias.
        save(d, "docker.io", "hub", "pw").unwrap();
        let v: Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert!(v["auths"]["https://index.docker.io/v1/"].is_object());
        assert!(matches!(
            load(d, "index.docker.io").unwrap(),
            Some(Credential::Basic { .. })
        ));

        assert!(remove(d, "127.0.0.1:5000").unwrap());
        assert!(!remove(d, "127.0.0.1:5000").unwrap());
        assert_eq!(load(d, "127.0.0.1:5000").unwrap(), None);
        assert!(load(d, "other.io").unwrap().is_some());
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp files left");
    }

    #[test]
    fn identity_tokens_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path());
        fs::write(
            dir.path().join("config.json"),
            r#"{"auths":{"q.io":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        assert_eq!(
            load(d, "q.io").unwrap(),
            Some(Credential::IdentityToken("tok".into()))
        );
        assert_eq!(
            format!("{:?}", load(d, "q.io").unwrap().unwrap()),
            "IdentityToken(***)"
        );
        fs::write(dir.path().join("config.json"), "[1]").unwrap();
        let e = save(d, "q.io", "u", "p").unwrap_err().to_string();
        assert!(e.contains("not a JSON object"), "{e}");
    }

    #[test]
    fn helper_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = Some(dir.path());
        fs::write(
            dir.path().join("config.json"),
            r#"{"credHelpers":{"h.io":"kiln-test-missing-helper"}}"#,
        )
        .unwrap();
        let e = load(d, "h.io").unwrap_err().to_string();
        assert!(e.contains("h.io"), "{e}");
        let e = save(d, "h.io", "u", "p").unwrap_err().to_string();
        assert!(
            e.contains("docker-credential-kiln-test-missing-helper"),
            "{e}"
        );
    }
}
