//! The image configuration a stage builds up (Docker's image config, including the
//! Docker extensions that the OCI config lacks: Healthcheck, Shell, OnBuild).

use std::collections::{BTreeMap, BTreeSet};

use crate::instructions::HealthConfig;
use kiln_ops::VertexId;

/// The runtime configuration of an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageConfig {
    /// `USER`.
    pub user: String,
    /// `ENV`, as `KEY=value`, in order.
    pub env: Vec<String>,
    /// `CMD`.
    pub cmd: Option<Vec<String>>,
    /// `ENTRYPOINT`.
    pub entrypoint: Option<Vec<String>>,
    /// `WORKDIR`.
    pub working_dir: String,
    /// `EXPOSE`, as `80/tcp`.
    pub exposed_ports: BTreeSet<String>,
    /// `VOLUME`.
    pub volumes: BTreeSet<String>,
    /// `LABEL`.
    pub labels: BTreeMap<String, String>,
    /// `STOPSIGNAL`.
    pub stop_signal: Option<String>,
    /// `HEALTHCHECK`.
    pub healthcheck: Option<HealthConfig>,
    /// `SHELL`.
    pub shell: Option<Vec<String>>,
    /// `ONBUILD` triggers, as written after the keyword.
    pub on_build: Vec<String>,
    /// `MAINTAINER` (the image's `author`).
    pub author: Option<String>,
}

impl ImageConfig {
    /// The value of an environment variable.
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

    /// The environment as pairs.
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

/// One history entry, as BuildKit writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// `RUN /bin/sh -c ... # buildkit`, `ENV A=b`, ...
    pub created_by: String,
    /// `buildkit.dockerfile.v0`.
    pub comment: String,
    /// The vertex whose result (diffed against its parent) is this entry's layer; `None`
    /// for metadata-only steps.
    pub vertex: Option<VertexId>,
}
