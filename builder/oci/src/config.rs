//! The runtime configuration of an image (`config` in an image config's JSON): what a
//! Dockerfile stage builds up, what kiln writes into the images it builds and what it
//! reads back from base images.
//!
//! kiln's own type rather than oci-spec's `ImageConfiguration`/`Config`: those lack
//! Docker's extensions (`Healthcheck`, `Shell`, `OnBuild`, `ArgsEscaped`), which
//! `HEALTHCHECK`, `SHELL` and `ONBUILD` set and which base images carry, and they keep
//! maps in hash maps (kiln's output must be byte-for-byte reproducible). The JSON
//! itself is written and read by the builder's image module, in BuildKit's field order.
//! The image's `author` (`MAINTAINER`) is a top-level field of the image config, not
//! part of this one.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// The runtime configuration of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `User` (`USER`).
    pub user: String,
    /// `Env` (`ENV`), as `KEY=value`, in order.
    pub env: Vec<String>,
    /// `Cmd` (`CMD`).
    pub cmd: Option<Vec<String>>,
    /// `Entrypoint` (`ENTRYPOINT`).
    pub entrypoint: Option<Vec<String>>,
    /// `WorkingDir` (`WORKDIR`).
    pub working_dir: String,
    /// `ExposedPorts` (`EXPOSE`), as `80/tcp`.
    pub exposed_ports: BTreeSet<String>,
    /// `Volumes` (`VOLUME`).
    pub volumes: BTreeSet<String>,
    /// `Labels` (`LABEL`).
    pub labels: BTreeMap<String, String>,
    /// `StopSignal` (`STOPSIGNAL`).
    pub stop_signal: Option<String>,
    /// `Healthcheck` (`HEALTHCHECK`; a Docker extension).
    pub healthcheck: Option<Healthcheck>,
    /// `Shell` (`SHELL`; a Docker extension).
    pub shell: Option<Vec<String>>,
    /// `OnBuild` triggers (`ONBUILD`, as written after the keyword; a Docker extension).
    pub on_build: Vec<String>,
    /// `ArgsEscaped` (Windows-only in Docker; written only when true).
    pub args_escaped: bool,
}

impl ImageConfig {
    /// The value of an environment variable (its last entry).
    pub fn env_get(&self, key: &str) -> Option<&str> {
        self.env.iter().rev().find_map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| *k == key)
                .map(|(_, v)| v)
        })
    }

    /// Sets an environment variable, replacing it in place if present.
    pub fn env_set(&mut self, key: &str, value: &str) {
        let entry = format!("{key}={value}");
        match self
            .env
            .iter_mut()
            .find(|kv| kv.split_once('=').map(|(k, _)| k) == Some(key) || kv.as_str() == key)
        {
            Some(slot) => *slot = entry,
            None => self.env.push(entry),
        }
    }

    /// The environment as pairs (an entry without `=` has an empty value).
    pub fn env_pairs(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|kv| match kv.split_once('=') {
                Some((k, v)) => (k.to_string(), v.to_string()),
                None => (kv.clone(), String::new()),
            })
            .collect()
    }
}

/// `HEALTHCHECK` settings (Docker's `HealthConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Healthcheck {
    /// `["NONE"]`, `["CMD", argv...]` or `["CMD-SHELL", line]`.
    pub test: Vec<String>,
    /// Time between checks (`--interval`).
    pub interval: Option<Duration>,
    /// Time after which a check is considered hung (`--timeout`).
    pub timeout: Option<Duration>,
    /// Start-up grace period (`--start-period`).
    pub start_period: Option<Duration>,
    /// Time between checks during the start period (`--start-interval`).
    pub start_interval: Option<Duration>,
    /// Consecutive failures needed to report unhealthy (`--retries`).
    pub retries: Option<u32>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_get_set_and_pairs() {
        let mut c = ImageConfig {
            env: vec!["PATH=/bin".into(), "A=1".into(), "BARE".into()],
            ..Default::default()
        };
        assert_eq!(c.env_get("PATH"), Some("/bin"));
        assert_eq!(c.env_get("BARE"), None);
        c.env_set("A", "2=3");
        c.env_set("BARE", "x");
        c.env_set("NEW", "");
        assert_eq!(c.env, ["PATH=/bin", "A=2=3", "BARE=x", "NEW="]);
        assert_eq!(c.env_get("A"), Some("2=3"));
        assert_eq!(
            c.env_pairs()[1],
            ("A".to_string(), "2=3".to_string()),
            "only the first = splits"
        );
    }
}
