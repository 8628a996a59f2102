//! Image assembly: turns what a build produced (runtime config, history, layer
//! descriptors) into the image config JSON and the image manifest, with their digests,
//! and reads a base image's config back.
//!
//! The config is Docker's image config (a superset of the OCI one: it carries the
//! `Healthcheck`, `Shell` and `OnBuild` extensions that the OCI config lacks), written
//! with kiln's own serde structs so that the field order is fixed and every map is
//! sorted: the same [`ImageSpec`] always gives the same bytes and so the same digests.
//! The manifest uses `oci-spec`'s types and is written as canonical JSON (object keys
//! sorted, no whitespace), since `oci-spec` keeps annotations in hash maps.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use kiln_oci::Digest;
pub use kiln_oci::config::{Healthcheck, ImageConfig};
use oci_spec::image::{Arch, Descriptor, ImageManifestBuilder, MediaType, Os, PlatformBuilder};
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};

pub use kiln_oci::media_types::{
    DOCKER_CONFIG, DOCKER_FOREIGN_LAYER_GZIP, DOCKER_FOREIGN_LAYER_TAR, DOCKER_LAYER_GZIP,
    DOCKER_LAYER_TAR, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST,
};
use kiln_oci::media_types::{
    OCI_CONFIG, OCI_LAYER_GZIP as OCI_GZIP, OCI_LAYER_TAR as OCI_TAR, OCI_LAYER_ZSTD as OCI_ZSTD,
    OCI_MANIFEST, OCI_ND_LAYER_GZIP as OCI_ND_GZIP, OCI_ND_LAYER_TAR as OCI_ND_TAR,
    OCI_ND_LAYER_ZSTD as OCI_ND_ZSTD,
};

/// Errors from assembling an image or reading an image config.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The image's platform lacks an OS or an architecture.
    #[error("image platform is incomplete: os {os:?}, architecture {arch:?}")]
    MissingPlatform {
        /// The OS given.
        os: String,
        /// The architecture given.
        arch: String,
    },
    /// The number of history entries that are not `empty_layer` differs from the
    /// number of layers.
    #[error("image history has {history} entries with a layer but the image has {layers} layers")]
    HistoryMismatch {
        /// Non-empty history entries.
        history: usize,
        /// Layers.
        layers: usize,
    },
    /// A digest in an image config is not `sha256:` followed by 64 lowercase hex
    /// digits.
    #[error("image config: invalid {what}: {source}")]
    InvalidDigest {
        /// What the digest names (`diff_id`).
        what: &'static str,
        /// Why it was refused.
        #[source]
        source: kiln_oci::DigestError,
    },
    /// A layer's media type has no equivalent in the chosen media type set.
    #[error("layer {digest}: media type {media_type} cannot be used in {target} manifests")]
    UnsupportedLayerMediaType {
        /// The layer's digest.
        digest: Digest,
        /// Its media type.
        media_type: String,
        /// `OCI` or `Docker schema 2`.
        target: &'static str,
    },
    /// Docker schema 2 manifests have no annotations.
    #[error("manifest annotations ({keys}) cannot be written in a Docker schema 2 manifest")]
    AnnotationsWithDocker {
        /// The annotation keys, comma separated.
        keys: String,
    },
    /// A healthcheck duration does not fit Docker's signed 64-bit nanosecond encoding.
    #[error("healthcheck {field} of {value:?} is too long for Docker's nanosecond encoding")]
    DurationTooLong {
        /// `Interval`, `Timeout`, ...
        field: &'static str,
        /// The duration.
        value: Duration,
    },
    /// `oci-spec` refused a manifest or descriptor.
    #[error("building the {what}: {source}")]
    Spec {
        /// What was being built.
        what: &'static str,
        /// The error.
        #[source]
        source: oci_spec::OciSpecError,
    },
    /// Serializing JSON failed.
    #[error("serializing the image {what}: {source}")]
    Serialize {
        /// `config` or `manifest`.
        what: &'static str,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// An image config could not be parsed.
    #[error("parsing image config: {0}")]
    Parse(#[source] serde_json::Error),
}

/// Result type of this module.
pub type Result<T, E = ImageError> = std::result::Result<T, E>;

/// Which media types the manifest, config and layers carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MediaTypes {
    /// OCI image spec media types.
    #[default]
    Oci,
    /// Docker image manifest v2, schema 2 media types.
    Docker,
}

impl MediaTypes {
    /// The manifest's media type.
    pub fn manifest(self) -> &'static str {
        match self {
            MediaTypes::Oci => OCI_MANIFEST,
            MediaTypes::Docker => DOCKER_MANIFEST,
        }
    }

    /// The config's media type.
    pub fn config(self) -> &'static str {
        match self {
            MediaTypes::Oci => OCI_CONFIG,
            MediaTypes::Docker => DOCKER_CONFIG,
        }
    }

    /// The media type a layer of type `media_type` (OCI or Docker) has in this set, or
    /// `None` when there is no equivalent (zstd in Docker manifests, unknown types).
    pub fn layer(self, media_type: &str) -> Option<&'static str> {
        match (self, media_type) {
            (MediaTypes::Oci, OCI_TAR | DOCKER_LAYER_TAR) => Some(OCI_TAR),
            (MediaTypes::Oci, OCI_GZIP | DOCKER_LAYER_GZIP) => Some(OCI_GZIP),
            (MediaTypes::Oci, OCI_ZSTD) => Some(OCI_ZSTD),
            (MediaTypes::Oci, OCI_ND_TAR | DOCKER_FOREIGN_LAYER_TAR) => Some(OCI_ND_TAR),
            (MediaTypes::Oci, OCI_ND_GZIP | DOCKER_FOREIGN_LAYER_GZIP) => Some(OCI_ND_GZIP),
            (MediaTypes::Oci, OCI_ND_ZSTD) => Some(OCI_ND_ZSTD),
            (MediaTypes::Docker, OCI_TAR | DOCKER_LAYER_TAR) => Some(DOCKER_LAYER_TAR),
            (MediaTypes::Docker, OCI_GZIP | DOCKER_LAYER_GZIP) => Some(DOCKER_LAYER_GZIP),
            (MediaTypes::Docker, OCI_ND_TAR | DOCKER_FOREIGN_LAYER_TAR) => {
                Some(DOCKER_FOREIGN_LAYER_TAR)
            }
            (MediaTypes::Docker, OCI_ND_GZIP | DOCKER_FOREIGN_LAYER_GZIP) => {
                Some(DOCKER_FOREIGN_LAYER_GZIP)
            }
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            MediaTypes::Oci => "OCI",
            MediaTypes::Docker => "Docker schema 2",
        }
    }
}

/// One history entry of an image config.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HistoryItem {
    /// When the step ran.
    pub created: Option<DateTime<Utc>>,
    /// The instruction, e.g. `RUN /bin/sh -c make # buildkit`.
    pub created_by: String,
    /// A comment, e.g. `buildkit.dockerfile.v0`.
    pub comment: Option<String>,
    /// True when the step made no layer.
    pub empty_layer: bool,
}

/// A layer as the manifest references it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerDesc {
    /// The blob's media type.
    pub media_type: String,
    /// Digest of the (compressed) blob.
    pub digest: Digest,
    /// The blob's size in bytes.
    pub size: u64,
    /// Digest of the uncompressed tar.
    pub diff_id: Digest,
}

impl From<&crate::snapshots::LayerRef> for LayerDesc {
    fn from(l: &crate::snapshots::LayerRef) -> Self {
        LayerDesc {
            media_type: l.media_type.clone(),
            digest: l.digest.clone(),
            size: l.size,
            diff_id: l.diff_id.clone(),
        }
    }
}

impl From<&LayerDesc> for crate::snapshots::LayerRef {
    fn from(l: &LayerDesc) -> Self {
        crate::snapshots::LayerRef {
            digest: l.digest.clone(),
            diff_id: l.diff_id.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
        }
    }
}

/// Everything an image is built from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageSpec {
    /// `os`, e.g. `linux`.
    pub platform_os: String,
    /// `architecture`, e.g. `amd64`.
    pub platform_arch: String,
    /// `variant`, e.g. `v8`.
    pub platform_variant: Option<String>,
    /// `created`: SOURCE_DATE_EPOCH when set, else the build time; `None` omits it.
    pub created: Option<DateTime<Utc>>,
    /// `author` (`MAINTAINER`).
    pub author: Option<String>,
    /// The runtime config.
    pub config: ImageConfig,
    /// The history, one entry per step.
    pub history: Vec<HistoryItem>,
    /// The layers, base first.
    pub layers: Vec<LayerDesc>,
    /// Manifest annotations (OCI media types only).
    pub annotations: BTreeMap<String, String>,
}

/// An assembled image: config and manifest bytes with their digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// The config JSON.
    pub config_json: Vec<u8>,
    /// Digest of [`Self::config_json`].
    pub config_digest: Digest,
    /// The manifest JSON.
    pub manifest_json: Vec<u8>,
    /// Digest of [`Self::manifest_json`].
    pub manifest_digest: Digest,
    /// A descriptor of the manifest (media type, digest, size, platform), as an index
    /// lists it.
    pub manifest_descriptor: Descriptor,
    /// The layers, with the media types the manifest gives them.
    pub layers: Vec<LayerDesc>,
}

/// A base image's config, as [`parse_config`] reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedConfig {
    /// `os`.
    pub os: String,
    /// `architecture`.
    pub architecture: String,
    /// `variant`.
    pub variant: Option<String>,
    /// `created`, if present and valid RFC 3339.
    pub created: Option<DateTime<Utc>>,
    /// `author`.
    pub author: Option<String>,
    /// The runtime config.
    pub config: ImageConfig,
    /// The history.
    pub history: Vec<HistoryItem>,
    /// `rootfs.diff_ids`.
    pub diff_ids: Vec<Digest>,
}

/// `sha256:<hex>` of `data`: kiln's one sha256.
pub use kiln_oci::digest::sha256_digest;

/// Serializes `value` as canonical JSON: object keys sorted at every level, no
/// whitespace. Used for manifests and indexes, whose `oci-spec` types keep annotations
/// in hash maps.
pub fn canonical_json<T: Serialize>(value: &T) -> serde_json::Result<Vec<u8>> {
    fn sort(value: serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<_> = map.into_iter().collect();
                entries.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sort(v))).collect())
            }
            serde_json::Value::Array(items) => {
                serde_json::Value::Array(items.into_iter().map(sort).collect())
            }
            other => other,
        }
    }
    serde_json::to_vec(&sort(serde_json::to_value(value)?))
}

/// RFC 3339 in UTC with `Z`, fractional seconds only when present.
fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

// ---- config JSON, as written -------------------------------------------------------

/// An empty JSON object, the value type of `ExposedPorts` and `Volumes`.
#[derive(Serialize)]
struct Empty {}

#[derive(Serialize)]
struct ConfigOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    author: Option<&'a str>,
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    variant: Option<&'a str>,
    config: RuntimeOut<'a>,
    rootfs: RootFsOut<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    history: Vec<HistoryOut<'a>>,
}

/// Field order follows BuildKit's `DockerOCIImageConfig` (OCI `ImageConfig` followed
/// by Docker's extensions); every field is `omitempty`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RuntimeOut<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    user: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    exposed_ports: BTreeMap<&'a str, Empty>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    env: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    entrypoint: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    cmd: &'a [String],
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    volumes: BTreeMap<&'a str, Empty>,
    #[serde(skip_serializing_if = "str::is_empty")]
    working_dir: &'a str,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    labels: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    stop_signal: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    args_escaped: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    healthcheck: Option<HealthOut<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    on_build: &'a [String],
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    shell: &'a [String],
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct HealthOut<'a> {
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    test: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    start_interval: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retries: Option<u32>,
}

#[derive(Serialize)]
struct RootFsOut<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    diff_ids: Vec<&'a str>,
}

#[derive(Serialize)]
struct HistoryOut<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<String>,
    #[serde(skip_serializing_if = "str::is_empty")]
    created_by: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    comment: Option<&'a str>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    empty_layer: bool,
}

/// Docker's encoding of a duration: signed 64-bit nanoseconds, omitted when zero.
fn nanos(field: &'static str, d: Option<Duration>) -> Result<Option<i64>> {
    match d {
        None => Ok(None),
        Some(d) if d.is_zero() => Ok(None),
        Some(d) => i64::try_from(d.as_nanos())
            .map(Some)
            .map_err(|_| ImageError::DurationTooLong { field, value: d }),
    }
}

fn health_out(h: &Healthcheck) -> Result<HealthOut<'_>> {
    Ok(HealthOut {
        test: &h.test,
        interval: nanos("Interval", h.interval)?,
        timeout: nanos("Timeout", h.timeout)?,
        start_period: nanos("StartPeriod", h.start_period)?,
        start_interval: nanos("StartInterval", h.start_interval)?,
        retries: h.retries.filter(|r| *r != 0),
    })
}

fn config_json(spec: &ImageSpec) -> Result<Vec<u8>> {
    let c = &spec.config;
    let empty: &[String] = &[];
    let runtime = RuntimeOut {
        user: &c.user,
        exposed_ports: c
            .exposed_ports
            .iter()
            .map(|p| (p.as_str(), Empty {}))
            .collect(),
        env: &c.env,
        entrypoint: c.entrypoint.as_deref().unwrap_or(empty),
        cmd: c.cmd.as_deref().unwrap_or(empty),
        volumes: c.volumes.iter().map(|v| (v.as_str(), Empty {})).collect(),
        working_dir: &c.working_dir,
        labels: &c.labels,
        stop_signal: c.stop_signal.as_deref().unwrap_or(""),
        args_escaped: c.args_escaped,
        healthcheck: c.healthcheck.as_ref().map(health_out).transpose()?,
        on_build: &c.on_build,
        shell: c.shell.as_deref().unwrap_or(empty),
    };
    let out = ConfigOut {
        created: spec.created.as_ref().map(rfc3339),
        author: spec.author.as_deref().filter(|a| !a.is_empty()),
        architecture: &spec.platform_arch,
        os: &spec.platform_os,
        variant: spec.platform_variant.as_deref().filter(|v| !v.is_empty()),
        config: runtime,
        rootfs: RootFsOut {
            kind: "layers",
            diff_ids: spec.layers.iter().map(|l| l.diff_id.as_str()).collect(),
        },
        history: spec
            .history
            .iter()
            .map(|h| HistoryOut {
                created: h.created.as_ref().map(rfc3339),
                created_by: &h.created_by,
                comment: h.comment.as_deref().filter(|c| !c.is_empty()),
                empty_layer: h.empty_layer,
            })
            .collect(),
    };
    serde_json::to_vec(&out).map_err(|source| ImageError::Serialize {
        what: "config",
        source,
    })
}

/// Builds the config and manifest of an image.
///
/// Checks that the platform is complete, that the
/// history has one non-empty entry per layer, and maps the layers' media types to
/// `media` (Docker has no zstd layer type: such layers are an error, as are manifest
/// annotations with Docker media types).
pub fn build_image(spec: &ImageSpec, media: MediaTypes) -> Result<BuiltImage> {
    if spec.platform_os.is_empty() || spec.platform_arch.is_empty() {
        return Err(ImageError::MissingPlatform {
            os: spec.platform_os.clone(),
            arch: spec.platform_arch.clone(),
        });
    }
    let with_layer = spec.history.iter().filter(|h| !h.empty_layer).count();
    if with_layer != spec.layers.len() {
        return Err(ImageError::HistoryMismatch {
            history: with_layer,
            layers: spec.layers.len(),
        });
    }
    if media == MediaTypes::Docker && !spec.annotations.is_empty() {
        let keys: Vec<&str> = spec.annotations.keys().map(String::as_str).collect();
        return Err(ImageError::AnnotationsWithDocker {
            keys: keys.join(", "),
        });
    }

    let mut layers = Vec::with_capacity(spec.layers.len());
    let mut layer_descs = Vec::with_capacity(spec.layers.len());
    for layer in &spec.layers {
        let media_type = media.layer(&layer.media_type).ok_or_else(|| {
            ImageError::UnsupportedLayerMediaType {
                digest: layer.digest.clone(),
                media_type: layer.media_type.clone(),
                target: media.name(),
            }
        })?;
        layer_descs.push(Descriptor::new(
            MediaType::from(media_type),
            layer.size,
            &layer.digest,
        ));
        layers.push(LayerDesc {
            media_type: media_type.to_string(),
            ..layer.clone()
        });
    }

    let config_json = config_json(spec)?;
    let config_digest = sha256_digest(&config_json);
    let config_desc = Descriptor::new(
        MediaType::from(media.config()),
        config_json.len() as u64,
        &config_digest,
    );

    let mut builder = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::from(media.manifest()))
        .config(config_desc)
        .layers(layer_descs);
    if !spec.annotations.is_empty() {
        let annotations: HashMap<String, String> = spec
            .annotations
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        builder = builder.annotations(annotations);
    }
    let manifest = builder.build().map_err(|source| ImageError::Spec {
        what: "manifest",
        source,
    })?;
    let manifest_json = canonical_json(&manifest).map_err(|source| ImageError::Serialize {
        what: "manifest",
        source,
    })?;
    let manifest_digest = sha256_digest(&manifest_json);

    let mut platform = PlatformBuilder::default()
        .architecture(Arch::from(spec.platform_arch.as_str()))
        .os(Os::from(spec.platform_os.as_str()));
    if let Some(variant) = spec.platform_variant.as_deref().filter(|v| !v.is_empty()) {
        platform = platform.variant(variant);
    }
    let platform = platform.build().map_err(|source| ImageError::Spec {
        what: "platform",
        source,
    })?;
    let mut manifest_descriptor = Descriptor::new(
        MediaType::from(media.manifest()),
        manifest_json.len() as u64,
        &manifest_digest,
    );
    manifest_descriptor.set_platform(Some(platform));

    Ok(BuiltImage {
        config_json,
        config_digest,
        manifest_json,
        manifest_digest,
        manifest_descriptor,
        layers,
    })
}

// ---- config JSON, as read ----------------------------------------------------------

/// Docker's `strslice`: a string or an array of strings.
#[derive(Deserialize)]
#[serde(untagged)]
enum StrSlice {
    One(String),
    Many(Vec<Option<String>>),
}

impl StrSlice {
    fn into_vec(self) -> Vec<String> {
        match self {
            StrSlice::One(s) => vec![s],
            StrSlice::Many(v) => v.into_iter().map(Option::unwrap_or_default).collect(),
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct ConfigIn {
    created: Option<String>,
    author: Option<String>,
    architecture: Option<String>,
    os: Option<String>,
    variant: Option<String>,
    config: Option<RuntimeIn>,
    rootfs: Option<RootFsIn>,
    history: Option<Vec<HistoryIn>>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct RuntimeIn {
    user: Option<String>,
    exposed_ports: Option<BTreeMap<String, IgnoredAny>>,
    env: Option<Vec<Option<String>>>,
    entrypoint: Option<StrSlice>,
    cmd: Option<StrSlice>,
    volumes: Option<BTreeMap<String, IgnoredAny>>,
    working_dir: Option<String>,
    labels: Option<BTreeMap<String, Option<String>>>,
    stop_signal: Option<String>,
    args_escaped: Option<bool>,
    healthcheck: Option<HealthIn>,
    on_build: Option<Vec<Option<String>>>,
    shell: Option<StrSlice>,
}

#[derive(Deserialize, Default)]
#[serde(default, rename_all = "PascalCase")]
struct HealthIn {
    test: Option<StrSlice>,
    interval: Option<serde_json::Value>,
    timeout: Option<serde_json::Value>,
    start_period: Option<serde_json::Value>,
    start_interval: Option<serde_json::Value>,
    retries: Option<serde_json::Value>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RootFsIn {
    diff_ids: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct HistoryIn {
    created: Option<String>,
    created_by: Option<String>,
    comment: Option<String>,
    empty_layer: Option<bool>,
}

fn parse_time(s: Option<String>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s?.as_str())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// A Docker nanosecond duration; zero, negative or non-numeric values read as unset.
fn parse_nanos(v: Option<serde_json::Value>) -> Option<Duration> {
    let v = v?;
    let n = v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 1.0)
            .map(|f| f as u64)
    })?;
    (n > 0).then(|| Duration::from_nanos(n))
}

fn flatten(v: Option<Vec<Option<String>>>) -> Vec<String> {
    v.unwrap_or_default().into_iter().flatten().collect()
}

/// Reads an image config (OCI or Docker). Missing and `null` fields read as empty;
/// Docker's `Healthcheck` durations are nanosecond integers; `Cmd`, `Entrypoint` and
/// `Shell` may be a string or an array, as Docker accepts.
pub fn parse_config(json: &[u8]) -> Result<ParsedConfig> {
    let c: ConfigIn = serde_json::from_slice(json).map_err(ImageError::Parse)?;
    let diff_ids = c
        .rootfs
        .and_then(|r| r.diff_ids)
        .unwrap_or_default()
        .iter()
        .map(|d| Digest::parse(d))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| ImageError::InvalidDigest {
            what: "diff_id",
            source,
        })?;
    let r = c.config.unwrap_or_default();
    let healthcheck = r.healthcheck.map(|h| Healthcheck {
        test: h.test.map(StrSlice::into_vec).unwrap_or_default(),
        interval: parse_nanos(h.interval),
        timeout: parse_nanos(h.timeout),
        start_period: parse_nanos(h.start_period),
        start_interval: parse_nanos(h.start_interval),
        retries: h
            .retries
            .and_then(|v| v.as_u64())
            .filter(|n| *n > 0)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX)),
    });
    let config = ImageConfig {
        user: r.user.unwrap_or_default(),
        env: flatten(r.env),
        cmd: r.cmd.map(StrSlice::into_vec),
        entrypoint: r.entrypoint.map(StrSlice::into_vec),
        working_dir: r.working_dir.unwrap_or_default(),
        exposed_ports: r.exposed_ports.unwrap_or_default().into_keys().collect(),
        volumes: r.volumes.unwrap_or_default().into_keys().collect(),
        labels: r
            .labels
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.unwrap_or_default()))
            .collect(),
        stop_signal: r.stop_signal.filter(|s| !s.is_empty()),
        healthcheck,
        shell: r.shell.map(StrSlice::into_vec),
        on_build: flatten(r.on_build),
        args_escaped: r.args_escaped.unwrap_or(false),
    };
    Ok(ParsedConfig {
        os: c.os.unwrap_or_default(),
        architecture: c.architecture.unwrap_or_default(),
        variant: c.variant.filter(|v| !v.is_empty()),
        created: parse_time(c.created),
        author: c.author.filter(|a| !a.is_empty()),
        config,
        history: c
            .history
            .unwrap_or_default()
            .into_iter()
            .map(|h| HistoryItem {
                created: parse_time(h.created),
                created_by: h.created_by.unwrap_or_default(),
                comment: h.comment.filter(|c| !c.is_empty()),
                empty_layer: h.empty_layer.unwrap_or(false),
            })
            .collect(),
        diff_ids,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn layer(n: u8) -> LayerDesc {
        LayerDesc {
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
            digest: Digest::from_sha256_bytes(&[n; 32]),
            size: 100 + u64::from(n),
            diff_id: Digest::from_sha256_bytes(&[n + 100; 32]),
        }
    }

    fn spec() -> ImageSpec {
        ImageSpec {
            platform_os: "linux".into(),
            platform_arch: "arm64".into(),
            platform_variant: Some("v8".into()),
            created: Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
            author: Some("kiln".into()),
            config: ImageConfig {
                user: "app".into(),
                env: vec!["PATH=/usr/bin:/bin".into(), "A=b".into()],
                cmd: Some(vec!["serve".into()]),
                entrypoint: Some(vec!["/app".into()]),
                working_dir: "/srv".into(),
                exposed_ports: ["80/tcp".to_string(), "53/udp".to_string()].into(),
                volumes: ["/data".to_string()].into(),
                labels: [("b".to_string(), "2".to_string()), ("a".into(), "1".into())].into(),
                stop_signal: Some("SIGTERM".into()),
                healthcheck: Some(Healthcheck {
                    test: vec!["CMD-SHELL".into(), "curl -f localhost".into()],
                    interval: Some(Duration::from_secs(30)),
                    timeout: Some(Duration::from_millis(1500)),
                    start_period: Some(Duration::from_secs(5)),
                    start_interval: Some(Duration::from_secs(1)),
                    retries: Some(3),
                }),
                shell: Some(vec!["/bin/bash".into(), "-c".into()]),
                on_build: vec!["RUN echo hi".into()],
                args_escaped: false,
            },
            history: vec![
                HistoryItem {
                    created: Some(Utc.with_ymd_and_hms(2024, 1, 2, 3, 4, 5).unwrap()),
                    created_by: "COPY . / # buildkit".into(),
                    comment: Some("buildkit.dockerfile.v0".into()),
                    empty_layer: false,
                },
                HistoryItem {
                    created: None,
                    created_by: "ENV A=b".into(),
                    comment: None,
                    empty_layer: true,
                },
                HistoryItem {
                    created: None,
                    created_by: "RUN make".into(),
                    comment: None,
                    empty_layer: false,
                },
            ],
            layers: vec![layer(1), layer(2)],
            annotations: BTreeMap::new(),
        }
    }

    fn json(bytes: &[u8]) -> serde_json::Value {
        serde_json::from_slice(bytes).unwrap()
    }

    #[test]
    fn config_has_docker_shape() {
        let img = build_image(&spec(), MediaTypes::Oci).unwrap();
        let text = String::from_utf8(img.config_json.clone()).unwrap();
        assert!(text.starts_with(
            r#"{"created":"2024-01-02T03:04:05Z","author":"kiln","architecture":"arm64","os":"linux","variant":"v8","config":{"User":"app","ExposedPorts":{"53/udp":{},"80/tcp":{}},"Env":["#
        ), "{text}");
        let v = json(&img.config_json);
        let c = &v["config"];
        assert_eq!(c["Healthcheck"]["Interval"], 30_000_000_000i64);
        assert_eq!(c["Healthcheck"]["Timeout"], 1_500_000_000i64);
        assert_eq!(c["Healthcheck"]["Retries"], 3);
        assert_eq!(c["Volumes"], serde_json::json!({"/data": {}}));
        assert_eq!(c["Shell"], serde_json::json!(["/bin/bash", "-c"]));
        assert_eq!(c["OnBuild"], serde_json::json!(["RUN echo hi"]));
        assert!(c.get("ArgsEscaped").is_none());
        assert_eq!(v["rootfs"]["type"], "layers");
        assert_eq!(
            v["rootfs"]["diff_ids"][1],
            spec().layers[1].diff_id.as_str()
        );
        assert_eq!(v["history"][1]["empty_layer"], true);
        assert!(v["history"][0].get("empty_layer").is_none());
        assert!(v["history"][2].get("created").is_none());
        assert_eq!(img.config_digest, sha256_digest(&img.config_json));
    }

    #[test]
    fn empty_fields_are_omitted() {
        let s = ImageSpec {
            platform_os: "linux".into(),
            platform_arch: "amd64".into(),
            ..Default::default()
        };
        let img = build_image(&s, MediaTypes::Oci).unwrap();
        assert_eq!(
            String::from_utf8(img.config_json).unwrap(),
            r#"{"architecture":"amd64","os":"linux","config":{},"rootfs":{"type":"layers","diff_ids":[]}}"#
        );
    }

    #[test]
    fn manifest_is_oci_and_canonical() {
        let mut s = spec();
        s.annotations = [
            ("z.last".to_string(), "1".to_string()),
            ("a.first".into(), "2".into()),
            ("m.middle".into(), "3".into()),
        ]
        .into();
        let img = build_image(&s, MediaTypes::Oci).unwrap();
        let v = json(&img.manifest_json);
        assert_eq!(v["schemaVersion"], 2);
        assert_eq!(v["mediaType"], "application/vnd.oci.image.manifest.v1+json");
        assert_eq!(
            v["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        assert_eq!(v["config"]["digest"], img.config_digest.as_str());
        assert_eq!(v["config"]["size"], img.config_json.len());
        assert_eq!(v["layers"].as_array().unwrap().len(), 2);
        assert_eq!(v["layers"][0]["digest"], s.layers[0].digest.as_str());
        let text = String::from_utf8(img.manifest_json.clone()).unwrap();
        assert!(text.contains(r#""annotations":{"a.first":"2","m.middle":"3","z.last":"1"}"#));
        // Re-serializing gives the same bytes, whatever the hash maps' order.
        for _ in 0..20 {
            assert_eq!(build_image(&s, MediaTypes::Oci).unwrap(), img);
        }
        let d = &img.manifest_descriptor;
        assert_eq!(d.digest().to_string(), img.manifest_digest.as_str());
        assert_eq!(d.size(), img.manifest_json.len() as u64);
        let p = d.platform().as_ref().unwrap();
        assert_eq!(p.architecture().to_string(), "arm64");
        assert_eq!(p.os().to_string(), "linux");
        assert_eq!(p.variant().as_deref(), Some("v8"));
    }

    #[test]
    fn docker_media_types() {
        let img = build_image(&spec(), MediaTypes::Docker).unwrap();
        let v = json(&img.manifest_json);
        assert_eq!(v["mediaType"], DOCKER_MANIFEST);
        assert_eq!(v["config"]["mediaType"], DOCKER_CONFIG);
        assert_eq!(v["layers"][0]["mediaType"], DOCKER_LAYER_GZIP);
        assert_eq!(img.layers[1].media_type, DOCKER_LAYER_GZIP);
        assert_eq!(
            img.manifest_descriptor.media_type().to_string(),
            DOCKER_MANIFEST
        );

        let mut zstd = spec();
        zstd.layers[1].media_type = "application/vnd.oci.image.layer.v1.tar+zstd".into();
        let err = build_image(&zstd, MediaTypes::Docker).unwrap_err();
        assert!(matches!(err, ImageError::UnsupportedLayerMediaType { .. }));
        assert!(
            err.to_string().contains(zstd.layers[1].digest.as_str()),
            "{err}"
        );
        assert!(build_image(&zstd, MediaTypes::Oci).is_ok());

        let mut annotated = spec();
        annotated.annotations.insert("k".into(), "v".into());
        assert!(matches!(
            build_image(&annotated, MediaTypes::Docker),
            Err(ImageError::AnnotationsWithDocker { .. })
        ));

        // Docker layer types become OCI ones in OCI manifests.
        let mut docker_layers = spec();
        docker_layers.layers[0].media_type = DOCKER_LAYER_GZIP.into();
        let img = build_image(&docker_layers, MediaTypes::Oci).unwrap();
        assert_eq!(
            img.layers[0].media_type,
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
    }

    #[test]
    fn deterministic_and_sensitive() {
        let a = build_image(&spec(), MediaTypes::Oci).unwrap();
        let b = build_image(&spec(), MediaTypes::Oci).unwrap();
        assert_eq!(a.config_digest, b.config_digest);
        assert_eq!(a.manifest_digest, b.manifest_digest);
        assert_eq!(a.config_json, b.config_json);
        assert_eq!(a.manifest_json, b.manifest_json);

        let mut changed = spec();
        changed.config.env[1] = "A=c".into();
        let c = build_image(&changed, MediaTypes::Oci).unwrap();
        assert_ne!(a.config_digest, c.config_digest);
        assert_ne!(a.manifest_digest, c.manifest_digest);
    }

    #[test]
    fn history_must_match_layers() {
        let mut s = spec();
        s.history[1].empty_layer = false;
        let err = build_image(&s, MediaTypes::Oci).unwrap_err();
        assert!(matches!(
            err,
            ImageError::HistoryMismatch {
                history: 3,
                layers: 2
            }
        ));
        let mut s = spec();
        s.layers.pop();
        assert!(build_image(&s, MediaTypes::Oci).is_err());
    }

    #[test]
    fn bad_diff_ids_and_platform_are_rejected() {
        // Digests in an ImageSpec are typed; a config read back is checked.
        let img = build_image(&spec(), MediaTypes::Oci).unwrap();
        let mut v = json(&img.config_json);
        v["rootfs"]["diff_ids"][1] = "sha256:ABC".into();
        let err = parse_config(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(
            matches!(
                err,
                ImageError::InvalidDigest {
                    what: "diff_id",
                    ..
                }
            ),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains(r#"invalid diff_id: invalid digest "sha256:ABC""#),
            "{err}"
        );
        let mut s = spec();
        s.platform_arch.clear();
        assert!(matches!(
            build_image(&s, MediaTypes::Oci),
            Err(ImageError::MissingPlatform { .. })
        ));
    }

    #[test]
    fn too_long_duration_is_an_error() {
        let mut s = spec();
        s.config.healthcheck.as_mut().unwrap().timeout = Some(Duration::from_secs(u64::MAX));
        assert!(matches!(
            build_image(&s, MediaTypes::Oci),
            Err(ImageError::DurationTooLong {
                field: "Timeout",
                ..
            })
        ));
    }

    #[test]
    fn parse_round_trips() {
        let s = spec();
        let img = build_image(&s, MediaTypes::Oci).unwrap();
        let p = parse_config(&img.config_json).unwrap();
        assert_eq!(p.config, s.config);
        assert_eq!(p.history, s.history);
        assert_eq!(p.os, "linux");
        assert_eq!(p.architecture, "arm64");
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert_eq!(p.created, s.created);
        assert_eq!(p.author.as_deref(), Some("kiln"));
        let diff_ids: Vec<Digest> = s.layers.iter().map(|l| l.diff_id.clone()).collect();
        assert_eq!(p.diff_ids, diff_ids);

        // Building again from what was parsed gives the same config.
        let again = ImageSpec {
            platform_os: p.os,
            platform_arch: p.architecture,
            platform_variant: p.variant,
            created: p.created,
            author: p.author,
            config: p.config,
            history: p.history,
            layers: s.layers.clone(),
            annotations: BTreeMap::new(),
        };
        assert_eq!(
            build_image(&again, MediaTypes::Oci).unwrap().config_digest,
            img.config_digest
        );
    }

    #[test]
    fn parse_docker_config() {
        // Shaped like `docker inspect`-era configs: nulls, container_config, a string Cmd,
        // nanosecond healthcheck durations, fractional timestamps with offsets.
        let json = br##"{
            "architecture": "amd64",
            "config": {
                "Hostname": "", "User": "", "Env": ["PATH=/bin"], "Cmd": "/bin/sh",
                "Entrypoint": null, "OnBuild": null, "Labels": null, "Volumes": null,
                "ExposedPorts": {"8080/tcp": {}},
                "Healthcheck": {"Test": ["CMD", "true"], "Interval": 10000000000,
                                "StartPeriod": 0, "Retries": 2},
                "ArgsEscaped": true, "Shell": ["cmd", "/S", "/C"]
            },
            "container_config": {"Cmd": ["/bin/sh", "-c", "#(nop) CMD"]},
            "created": "2023-05-06T07:08:09.123456789+02:00",
            "docker_version": "20.10.7",
            "history": [{"created": "2023-05-06T07:08:09Z", "created_by": "/bin/sh"},
                        {"created_by": "CMD", "empty_layer": true}],
            "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ["sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"]}
        }"##;
        let p = parse_config(json).unwrap();
        assert_eq!(p.architecture, "amd64");
        assert_eq!(p.config.cmd, Some(vec!["/bin/sh".to_string()]));
        assert_eq!(p.config.entrypoint, None);
        assert!(p.config.on_build.is_empty());
        assert!(p.config.labels.is_empty());
        assert_eq!(p.config.exposed_ports, ["8080/tcp".to_string()].into());
        let h = p.config.healthcheck.unwrap();
        assert_eq!(h.test, vec!["CMD", "true"]);
        assert_eq!(h.interval, Some(Duration::from_secs(10)));
        assert_eq!(h.start_period, None);
        assert_eq!(h.timeout, None);
        assert_eq!(h.retries, Some(2));
        assert!(p.config.args_escaped);
        assert_eq!(p.config.shell.unwrap().len(), 3);
        assert_eq!(
            p.created,
            Some(
                Utc.with_ymd_and_hms(2023, 5, 6, 5, 8, 9).unwrap()
                    + chrono::Duration::nanoseconds(123_456_789)
            )
        );
        assert_eq!(p.history.len(), 2);
        assert!(p.history[1].empty_layer);
        assert_eq!(p.diff_ids, vec![sha256_digest(b"")]);

        // A minimal OCI config and an empty object both parse.
        let p = parse_config(br#"{"architecture":"arm","os":"linux","variant":"v7"}"#).unwrap();
        assert_eq!(p.variant.as_deref(), Some("v7"));
        assert_eq!(parse_config(b"{}").unwrap(), ParsedConfig::default());
        assert!(matches!(parse_config(b"[1]"), Err(ImageError::Parse(_))));
    }

    #[test]
    fn canonical_json_sorts_nested_keys() {
        let v = serde_json::json!({"b": [{"z": 1, "a": 2}], "a": {"y": null, "x": true}});
        assert_eq!(
            String::from_utf8(canonical_json(&v).unwrap()).unwrap(),
            r#"{"a":{"x":true,"y":null},"b":[{"a":2,"z":1}]}"#
        );
        assert_eq!(
            sha256_digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
