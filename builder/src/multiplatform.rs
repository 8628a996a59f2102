//! Multi-platform builds (`--platform linux/amd64,linux/arm64`): one solve per
//! platform (each with its own `TARGETPLATFORM`, sharing the cache), then an OCI image
//! index over the platforms' manifests, which the tags name, the OCI outputs hold and
//! `--push` pushes. And the emulation check: a `RUN` for a foreign architecture needs
//! qemu-user-static registered in binfmt_misc, which is checked before anything runs.

use std::path::Path;

use kiln_cache::{Digest, Store, TagRecord};
use kiln_frontend::convert::Plan;
use kiln_oci::media_types::{OCI_INDEX, OCI_MANIFEST};
use kiln_ops::{Op, Platform};

use crate::build::{BuildError, BuildOutcome, BuildRequest, OutputSpec, build};
use crate::image::canonical_json;
use crate::images::normalize_tag;

/// Where the kernel lists binfmt_misc registrations.
pub const BINFMT_MISC: &str = "/proc/sys/fs/binfmt_misc";

/// What Debian's packages for emulation are called, for the error.
const INSTALL_HINT: &str = "apt-get install qemu-user-static binfmt-support";

/// A `RUN` cannot run for its platform on this host.
#[derive(Debug, thiserror::Error)]
#[error(
    "RUN for {platform} on this {host} host needs emulation: {reason}; install it with `{INSTALL_HINT}` (binfmt_misc may need `mount -t binfmt_misc binfmt_misc {BINFMT_MISC}`)"
)]
pub struct EmulationError {
    /// The step's platform.
    pub platform: String,
    /// The host's.
    pub host: String,
    /// What is missing.
    pub reason: String,
}

/// qemu's name for an OCI architecture (`arm64` -> `aarch64`), as its binfmt_misc
/// entries are named (`qemu-aarch64`).
pub fn qemu_arch(arch: &str) -> &str {
    match arch {
        "amd64" => "x86_64",
        "arm64" => "aarch64",
        "386" => "i386",
        "ppc64le" => "ppc64le",
        "mips64le" => "mips64el",
        "mipsle" => "mipsel",
        "loong64" => "loongarch64",
        other => other,
    }
}

/// Whether the host runs `arch`'s binaries itself (amd64 runs 386, arm64 runs arm on
/// most machines; kiln counts only the first, which never fails).
fn native(host: &str, arch: &str) -> bool {
    host == arch || (host == "amd64" && arch == "386")
}

/// Checks that binfmt_misc (at `binfmt_dir`) runs `platform`'s binaries through an
/// enabled qemu entry with the `F` flag (the interpreter opened at registration, so it
/// works inside a container's root filesystem).
pub fn check_emulator(binfmt_dir: &Path, platform: &Platform) -> Result<(), EmulationError> {
    let host = Platform::host();
    if native(host.architecture(), platform.architecture()) {
        return Ok(());
    }
    let err = |reason: String| EmulationError {
        platform: platform.to_string(),
        host: host.to_string(),
        reason,
    };
    let name = format!("qemu-{}", qemu_arch(platform.architecture()));
    let entry = binfmt_dir.join(&name);
    let text = std::fs::read_to_string(&entry).map_err(|_| {
        err(format!(
            "no {name} is registered in binfmt_misc ({} has no {name})",
            binfmt_dir.display()
        ))
    })?;
    if text.lines().next() != Some("enabled") {
        return Err(err(format!("{} is disabled", entry.display())));
    }
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap_or("");
    if !flags.contains('F') {
        return Err(err(format!(
            "{} is registered without the F flag (its interpreter would have to be inside every image)",
            entry.display()
        )));
    }
    Ok(())
}

/// Checks, before anything runs, that every `RUN` of `plan` can run on this host: the
/// first one whose stage's platform needs a missing emulator fails the build.
pub fn check_plan_emulation(plan: &Plan, binfmt_dir: &Path) -> Result<(), EmulationError> {
    for id in plan.graph.topo_order() {
        let v = plan.graph.vertex(id);
        if !matches!(v.op, Op::Exec(_)) {
            continue;
        }
        let Some(origin) = v.origins.first() else {
            continue;
        };
        if let Some(stage) = plan.stages.iter().find(|s| s.index == origin.stage) {
            check_emulator(binfmt_dir, &stage.platform)?;
        }
    }
    Ok(())
}

/// `--platform a,b`: each platform, in order, duplicates dropped; none means the host's.
pub fn parse_platforms(spec: Option<&str>) -> Result<Vec<Platform>, BuildError> {
    let Some(spec) = spec else {
        return Ok(vec![Platform::host()]);
    };
    let mut out: Vec<Platform> = Vec::new();
    for p in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let p = Platform::parse(p).map_err(|e| BuildError::Platform(e.to_string()))?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    if out.is_empty() {
        return Err(BuildError::Platform(format!(
            "--platform {spec:?} names no platform"
        )));
    }
    Ok(out)
}

/// `linux_arm64_v8`: a platform as a directory name (buildx's local exporter's).
fn dir_name(p: &Platform) -> String {
    let mut s = format!("{}_{}", p.os(), p.architecture());
    if let Some(v) = p.variant() {
        s.push('_');
        s.push_str(v);
    }
    s
}

/// `trace.json` -> `trace.linux_arm64.json`: a file of a multi-platform build, per
/// platform.
pub fn per_platform_path(path: &Path, p: &Platform) -> std::path::PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let name = match path.extension() {
        Some(ext) => format!("{stem}.{}.{}", dir_name(p), ext.to_string_lossy()),
        None => format!("{stem}.{}", dir_name(p)),
    };
    path.with_file_name(name)
}

/// The result of a multi-platform build.
#[derive(Debug)]
pub struct MultiOutcome {
    /// Each platform's build, in the order asked.
    pub platforms: Vec<(Platform, BuildOutcome)>,
    /// The index's digest (what the tags name and `--push` pushes).
    pub index_digest: Digest,
    /// The index's size.
    pub index_size: u64,
}

/// Builds `req` for each of `platforms` and writes an OCI image index over them: the
/// tags name the index; `type=local` outputs get one directory per platform
/// (`DEST/linux_arm64`), `type=oci` ones the index, `type=docker` is refused (a Docker
/// archive holds no index, as buildx says); `--push` pushes the index and every
/// platform's manifest.
pub fn build_platforms(
    req: &BuildRequest,
    platforms: &[Platform],
) -> Result<MultiOutcome, BuildError> {
    if req
        .outputs
        .iter()
        .any(|o| matches!(o, OutputSpec::Docker(_)))
    {
        return Err(BuildError::Platform(
            "type=docker cannot hold a multi-platform image (an image index): use type=oci, or one --platform".into(),
        ));
    }
    let mut built = Vec::with_capacity(platforms.len());
    for p in platforms {
        let mut r = req.clone();
        r.platform = p.clone();
        r.tags = Vec::new();
        r.push = false;
        r.multi_platform = true;
        // One timeline per platform (each is its own solve): FILE.json ->
        // FILE.linux_arm64.json.
        r.trace = req.trace.as_ref().map(|t| per_platform_path(t, p));
        r.outputs = req
            .outputs
            .iter()
            .filter_map(|o| match o {
                OutputSpec::Local(d) => Some(OutputSpec::Local(d.join(dir_name(p)))),
                _ => None,
            })
            .collect();
        let outcome = build(&r)?;
        built.push((p.clone(), outcome));
    }
    let store = Store::open(&req.root).map_err(|source| BuildError::OpenStore {
        root: req.root.clone(),
        source,
    })?;
    let manifests: Vec<serde_json::Value> = built
        .iter()
        .map(|(p, o)| {
            let mut platform = serde_json::json!({"os": p.os(), "architecture": p.architecture()});
            if let Some(v) = p.variant() {
                platform["variant"] = v.into();
            }
            serde_json::json!({
                "mediaType": OCI_MANIFEST,
                "digest": o.report.image.digest,
                "size": o.manifest_size,
                "platform": platform,
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    let bytes = canonical_json(&index)
        .map_err(|e| BuildError::Platform(format!("serializing the index: {e}")))?;
    let index_digest = store.put_blob(&bytes)?;
    // The tag's config: the host's image if built, else the first platform's (what
    // `kiln run` and `kiln images` use).
    let host = Platform::host();
    let (_, shown) = built
        .iter()
        .find(|(p, _)| p.matches(&host))
        .unwrap_or(&built[0]);
    for tag in &req.tags {
        store.tag_set(
            &normalize_tag(tag),
            &TagRecord::new(index_digest.clone(), shown.report.image.config.clone()),
        )?;
    }
    if req.outputs.iter().any(|o| matches!(o, OutputSpec::Oci(_))) {
        // Every platform's layers, made present as a save makes them (a layer kept as
        // its snapshot only is written again, a lazy base's fetched).
        let item = crate::archive::SaveItem {
            manifest: index_digest.clone(),
            tags: Vec::new(),
        };
        let remote = std::sync::Arc::new(crate::remote::Remote::new(req.registry.clone()));
        crate::archive::fetch_layers(&store, &[item], remote)
            .map_err(|e| BuildError::Platform(e.to_string()))?;
    }
    for out in &req.outputs {
        if let OutputSpec::Oci(dest) = out {
            write_oci_index(&store, &index_digest, dest, &req.tags)?;
        }
    }
    if req.push {
        let remote = crate::remote::Remote::new(req.registry.clone());
        for tag in &req.tags {
            remote
                .push(&store, tag, false, &kiln_registry::NoProgress)
                .map_err(|source| BuildError::Push {
                    tag: tag.clone(),
                    source: Box::new(source),
                })?;
        }
    }
    Ok(MultiOutcome {
        platforms: built,
        index_digest,
        index_size: bytes.len() as u64,
    })
}

/// Writes the index `index` (in the store) and every platform's image as an OCI
/// layout (a directory) or archive (`DEST.tar`, or any DEST that is not a directory,
/// as the single-platform exporter decides).
fn write_oci_index(
    store: &Store,
    index: &Digest,
    dest: &Path,
    tags: &[String],
) -> Result<(), BuildError> {
    let bytes = store.read_blob(index)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| BuildError::Platform(format!("reading the index back: {e}")))?;
    let mut images = Vec::new();
    for m in v["manifests"].as_array().into_iter().flatten() {
        let d = m["digest"]
            .as_str()
            .and_then(|s| Digest::parse(s).ok())
            .ok_or_else(|| {
                BuildError::Platform("the index has an entry without a digest".into())
            })?;
        images.push(
            crate::archive::stored_image(store, &d)
                .map_err(|e| BuildError::Platform(e.to_string()))?,
        );
    }
    let blob_path = |d: &Digest| store.blob_file(d).map_err(std::io::Error::other);
    // As the single-platform exporter: `DEST.tar` is an archive, else a layout.
    let as_dir = dest.extension().is_none_or(|e| e != "tar");
    crate::exporter::write_oci_index(&images, index, &bytes, &blob_path, dest, tags, as_dir)
        .map_err(|e| BuildError::Platform(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(dir: &Path, name: &str, text: &str) {
        std::fs::write(dir.join(name), text).unwrap();
    }

    #[test]
    fn emulators_are_checked_in_binfmt_misc() {
        let dir = tempfile::tempdir().unwrap();
        let host = Platform::host();
        // The host's own architecture needs nothing.
        check_emulator(dir.path(), &host).unwrap();
        let foreign = if host.architecture() == "arm64" {
            "linux/amd64"
        } else {
            "linux/arm64"
        };
        let p = Platform::parse(foreign).unwrap();
        let name = format!("qemu-{}", qemu_arch(p.architecture()));
        let e = check_emulator(dir.path(), &p).unwrap_err().to_string();
        assert!(e.contains(&format!("no {name} is registered")), "{e}");
        assert!(
            e.contains("apt-get install qemu-user-static binfmt-support"),
            "{e}"
        );
        entry(
            dir.path(),
            &name,
            "disabled\ninterpreter /usr/bin/qemu\nflags: F\n",
        );
        assert!(
            check_emulator(dir.path(), &p)
                .unwrap_err()
                .to_string()
                .contains("disabled")
        );
        entry(
            dir.path(),
            &name,
            "enabled\ninterpreter /usr/bin/qemu\nflags: OC\n",
        );
        assert!(
            check_emulator(dir.path(), &p)
                .unwrap_err()
                .to_string()
                .contains("F flag")
        );
        entry(
            dir.path(),
            &name,
            "enabled\ninterpreter /usr/bin/qemu\nflags: POCF\n",
        );
        check_emulator(dir.path(), &p).unwrap();
    }

    #[test]
    fn platform_lists_parse() {
        let ps = parse_platforms(Some("linux/amd64, linux/arm64,linux/amd64")).unwrap();
        assert_eq!(ps.len(), 2);
        assert_eq!(ps[1].to_string(), "linux/arm64");
        assert_eq!(parse_platforms(None).unwrap(), vec![Platform::host()]);
        assert!(parse_platforms(Some(",")).is_err());
        assert_eq!(
            dir_name(&Platform::parse("linux/arm/v7").unwrap()),
            "linux_arm_v7"
        );
    }
}
