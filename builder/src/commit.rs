//! `kiln commit`: a container's writable layer becomes a new image, on top of the image
//! the container came from.
//!
//! The upper dir is written by the same deterministic layer writer as a RUN step's
//! ([`kiln_layer::write_layer`]: overlay whiteouts become `.wh.` files, opaque
//! directories `.wh..wh..opq`), leaving out the container's mount targets (volumes, bind
//! mounts, and the stubs the runtime made for them), whose contents are not the
//! container's. The new image keeps the base's layers and history and adds one layer and
//! one history entry (`created_by` is the container's command, as Docker's commit
//! writes it; `comment` the `-m` message). Its config is the container's, changed by the
//! `--change` instructions.

use std::collections::BTreeMap;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use chrono::Utc;
use kiln_cache::Store;
use kiln_frontend::instructions::{self, CmdLine, Instruction};
use kiln_frontend::{parser, shell};
use kiln_layer::{Compression, LayerOptions};

use crate::image::{self, BuiltImage, HistoryItem, ImageConfig, ImageSpec, LayerDesc, MediaTypes};
use crate::images::ImageInfo;

/// Why a commit failed: one line naming the change, the layer or the image.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// A `--change` is not an instruction commit accepts.
    #[error("invalid --change {change:?}: {reason}")]
    Change {
        /// The change as given.
        change: String,
        /// Why.
        reason: String,
    },
    /// Writing the layer failed.
    #[error("writing the container's layer from {}", .upper.display())]
    Layer {
        /// The writable layer.
        upper: PathBuf,
        /// Why.
        #[source]
        source: kiln_layer::LayerError,
    },
    /// The image could not be assembled.
    #[error(transparent)]
    Image(#[from] image::ImageError),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] kiln_cache::CacheError),
    /// The flush of the layer blob failed.
    #[error("writing the layer blob: {0}")]
    Io(#[from] std::io::Error),
}

/// Result of this module.
pub type Result<T, E = CommitError> = std::result::Result<T, E>;

/// The instructions `docker commit --change` accepts.
const ALLOWED: &[&str] = &[
    "CMD",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "LABEL",
    "ONBUILD",
    "USER",
    "VOLUME",
    "WORKDIR",
    "STOPSIGNAL",
];

/// Applies `docker commit --change` instructions to `config`, in order. Each is parsed by
/// the Dockerfile parser; variables are expanded against the config's environment, as
/// Docker does.
pub fn apply_changes(config: &mut ImageConfig, changes: &[String]) -> Result<()> {
    for change in changes {
        let bad = |reason: String| CommitError::Change {
            change: change.clone(),
            reason,
        };
        let ast = parser::parse(change).map_err(|d| bad(d.message))?;
        for node in &ast.children {
            let keyword = node.keyword().to_ascii_uppercase();
            if !ALLOWED.contains(&keyword.as_str()) {
                return Err(bad(format!("{keyword} is not a valid change command")));
            }
            let cmd = instructions::parse_command(&ast, node).map_err(|d| bad(d.message))?;
            apply_one(config, &cmd.instruction).map_err(bad)?;
        }
    }
    Ok(())
}

fn apply_one(config: &mut ImageConfig, ins: &Instruction) -> Result<(), String> {
    let env: BTreeMap<String, String> = config
        .env
        .iter()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lex = shell::Lex::default();
    let expand = |w: &str| lex.process_word(w, &env).map_err(|e| e.to_string());
    let with_shell = |c: &CmdLine| -> Vec<String> {
        if c.prepend_shell {
            let mut v = config
                .shell
                .clone()
                .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()]);
            v.extend(c.args.iter().cloned());
            v
        } else {
            c.args.clone()
        }
    };
    match ins {
        Instruction::Cmd(c) => config.cmd = Some(with_shell(c)),
        Instruction::Entrypoint(c) => {
            config.entrypoint = Some(with_shell(c));
        }
        Instruction::Env(pairs) => {
            let mut set = Vec::new();
            for p in pairs {
                set.push((expand(&p.key)?, expand(&p.value)?));
            }
            for (k, v) in set {
                config.env_set(&k, &v);
            }
        }
        Instruction::Label(pairs) => {
            for p in pairs {
                let (k, v) = (expand(&p.key)?, expand(&p.value)?);
                config.labels.insert(k, v);
            }
        }
        Instruction::Expose(ports) => {
            for p in ports {
                for port in kiln_frontend::convert::expand_port_spec(&expand(p)?)? {
                    config.exposed_ports.insert(port);
                }
            }
        }
        Instruction::User(u) => config.user = expand(u)?,
        Instruction::Volume(vols) => {
            for v in vols {
                let v = expand(v)?;
                if v.trim().is_empty() {
                    return Err("VOLUME specified can not be an empty string".into());
                }
                config.volumes.insert(v);
            }
        }
        Instruction::Workdir(w) => {
            let w = expand(w)?;
            let path = if w.starts_with('/') {
                w
            } else {
                let base = if config.working_dir.is_empty() {
                    "/"
                } else {
                    config.working_dir.as_str()
                };
                format!("{}/{w}", base.trim_end_matches('/'))
            };
            config.working_dir = if path.len() > 1 {
                path.trim_end_matches('/').to_string()
            } else {
                path
            };
        }
        Instruction::StopSignal(s) => {
            let s = expand(s)?;
            kiln_frontend::convert::validate_signal(&s)?;
            config.stop_signal = Some(s);
        }
        Instruction::Onbuild(expr) => config.on_build.push(expr.clone()),
        other => return Err(format!("{other:?} is not a valid change command")),
    }
    Ok(())
}

/// What to commit.
#[derive(Debug, Clone)]
pub struct CommitRequest<'a> {
    /// The container's writable layer (an overlay upper dir).
    pub upper: &'a Path,
    /// The image the container came from.
    pub image: &'a ImageInfo,
    /// The container's config (the image's, with the container's command, env, ...),
    /// before `changes`.
    pub config: ImageConfig,
    /// Absolute container paths left out of the layer with everything below them: the
    /// container's volume and bind mount targets.
    pub exclude: Vec<PathBuf>,
    /// `--change` instructions.
    pub changes: Vec<String>,
    /// `-m`: the history entry's comment.
    pub comment: Option<String>,
    /// `-a`: the image's author.
    pub author: Option<String>,
    /// The history entry's `created_by`: the container's command, as Docker's commit.
    pub created_by: String,
    /// The layer's compression.
    pub compression: Compression,
}

/// Writes the container's layer and the new image's config and manifest to the store
/// (nothing is tagged: the caller names the image).
pub fn commit(store: &Store, req: &CommitRequest) -> Result<BuiltImage> {
    let mut config = req.config.clone();
    apply_changes(&mut config, &req.changes)?;

    let exclude: Vec<PathBuf> = req
        .exclude
        .iter()
        .filter_map(|p| p.strip_prefix("/").ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .collect();
    let opts = LayerOptions {
        compression: req.compression,
        source_date_epoch: None,
        skip: Some(Box::new(move |rel: &Path| {
            exclude.iter().any(|e| rel.starts_with(e))
        })),
        chunk_cache: None,
    };
    let layer_err = |source| CommitError::Layer {
        upper: req.upper.to_path_buf(),
        source,
    };
    let mut writer = store.blob_writer()?;
    let info = {
        let mut buf = BufWriter::with_capacity(1 << 20, &mut writer);
        let info = kiln_layer::write_layer(req.upper, &opts, &mut buf).map_err(layer_err)?;
        std::io::Write::flush(&mut buf)?;
        info
    };
    writer.commit(Some(&info.digest))?;

    let base = &req.image.config;
    let created = Some(Utc::now());
    let mut history = base.history.clone();
    history.push(HistoryItem {
        created,
        created_by: req.created_by.clone(),
        comment: req.comment.clone().filter(|c| !c.is_empty()),
        empty_layer: false,
    });
    let mut layers: Vec<LayerDesc> = req.image.layers.iter().map(LayerDesc::from).collect();
    layers.push(LayerDesc {
        media_type: info.media_type.to_string(),
        digest: info.digest,
        size: info.size,
        diff_id: info.diff_id,
    });
    let spec = ImageSpec {
        platform_os: base.os.clone(),
        platform_arch: base.architecture.clone(),
        platform_variant: base.variant.clone(),
        created,
        author: req.author.clone().filter(|a| !a.is_empty()),
        config,
        history,
        layers,
        annotations: BTreeMap::new(),
    };
    let built = image::build_image(&spec, MediaTypes::Oci)?;
    store.put_blob(&built.config_json)?;
    store.put_blob(&built.manifest_json)?;
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshots::LayerRef;
    use std::fs;

    fn config() -> ImageConfig {
        ImageConfig {
            env: vec!["PATH=/bin".into(), "APP=/srv".into()],
            cmd: Some(vec!["sh".into()]),
            ..Default::default()
        }
    }

    #[test]
    fn changes_apply_as_dockerfile_instructions() {
        let mut c = config();
        apply_changes(
            &mut c,
            &[
                "CMD [\"/bin/app\", \"-v\"]".into(),
                "ENTRYPOINT exec tini".into(),
                "ENV MODE=prod HOME=$APP/home".into(),
                "EXPOSE 80 8000-8001/udp".into(),
                "LABEL a=\"b c\"".into(),
                "USER 1000:1000".into(),
                "VOLUME /data".into(),
                "WORKDIR $APP".into(),
                "WORKDIR sub/".into(),
                "STOPSIGNAL SIGINT".into(),
            ],
        )
        .unwrap();
        assert_eq!(c.cmd, Some(vec!["/bin/app".into(), "-v".into()]));
        assert_eq!(
            c.entrypoint,
            Some(vec!["/bin/sh".into(), "-c".into(), "exec tini".into()])
        );
        assert_eq!(c.env_get("MODE"), Some("prod"));
        assert_eq!(c.env_get("HOME"), Some("/srv/home"));
        let ports: Vec<_> = c.exposed_ports.iter().cloned().collect();
        assert_eq!(ports, ["80/tcp", "8000/udp", "8001/udp"]);
        assert_eq!(c.labels["a"], "b c");
        assert_eq!(c.user, "1000:1000");
        assert!(c.volumes.contains("/data"));
        assert_eq!(c.working_dir, "/srv/sub");
        assert_eq!(c.stop_signal.as_deref(), Some("SIGINT"));

        for (bad, why) in [
            ("RUN true", "RUN is not a valid change command"),
            ("FROM x", "FROM is not a valid change command"),
            ("STOPSIGNAL NOPE", "NOPE"),
        ] {
            let e = apply_changes(&mut c, &[bad.into()])
                .unwrap_err()
                .to_string();
            assert!(e.starts_with(&format!("invalid --change {bad:?}: ")), "{e}");
            assert!(e.contains(why), "{e}");
        }
    }

    #[test]
    fn commit_adds_one_layer_and_history_entry_without_mount_targets() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // A base image of one layer.
        let base_layer = tempfile::tempdir().unwrap();
        fs::write(base_layer.path().join("base"), b"b").unwrap();
        let mut w = store.blob_writer().unwrap();
        let li = kiln_layer::write_layer(
            base_layer.path(),
            &LayerOptions::default(),
            std::io::BufWriter::new(&mut w),
        )
        .unwrap();
        w.commit(Some(&li.digest)).unwrap();
        let image = ImageInfo {
            manifest_digest: li.digest.clone(),
            config_digest: li.digest.clone(),
            layers: vec![LayerRef {
                digest: li.digest.clone(),
                diff_id: li.diff_id.clone(),
                size: li.size,
                media_type: li.media_type.to_string(),
            }],
            chain_id: li.diff_id.clone(),
            config: image::ParsedConfig {
                os: "linux".into(),
                architecture: "amd64".into(),
                history: vec![HistoryItem {
                    created_by: "ADD base /".into(),
                    ..Default::default()
                }],
                diff_ids: vec![li.diff_id.clone()],
                ..Default::default()
            },
        };
        let upper = tempfile::tempdir().unwrap();
        fs::write(upper.path().join("new"), b"n").unwrap();
        fs::create_dir_all(upper.path().join("data/inner")).unwrap();
        fs::write(upper.path().join("data/inner/x"), b"volume data").unwrap();
        let req = CommitRequest {
            upper: upper.path(),
            image: &image,
            config: config(),
            exclude: vec![PathBuf::from("/data")],
            changes: vec!["ENV K=v".into()],
            comment: Some("snapshot".into()),
            author: Some("me".into()),
            created_by: "sh -c echo n > /new".into(),
            compression: Compression::default(),
        };
        let built = commit(&store, &req).unwrap();
        assert_eq!(built.layers.len(), 2);
        assert_eq!(built.layers[0].digest, li.digest);
        let parsed = image::parse_config(&built.config_json).unwrap();
        assert_eq!(parsed.diff_ids.len(), 2);
        assert_eq!(parsed.author.as_deref(), Some("me"));
        assert_eq!(parsed.config.env_get("K"), Some("v"));
        let last = parsed.history.last().unwrap();
        assert_eq!(last.created_by, "sh -c echo n > /new");
        assert_eq!(last.comment.as_deref(), Some("snapshot"));
        assert!(!last.empty_layer);
        assert!(store.has_blob(&built.config_digest) && store.has_blob(&built.manifest_digest));
        // The layer holds /new and not the volume's target.
        let blob = store.open_blob(&built.layers[1].digest).unwrap();
        let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(blob));
        let names: Vec<String> = tar
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["new"]);
    }
}
