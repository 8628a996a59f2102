//! `kiln volume ...`, `kiln diff`, `kiln commit`, `kiln system df`, `kiln rmi`,
//! `kiln image prune`, `kiln du` and `kiln prune`: the commands over what containers leave on disk, with Docker's
//! flags, columns and messages.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, anyhow, bail};
use kiln_cache::{Store, TagRecord};
use kiln_fs::LayeredFs;
use kiln_ops::Platform;

use kiln_builder::changes::{self, human_size};
use kiln_builder::commit::{CommitRequest, commit};
use kiln_builder::containers::{Container, Containers, MountKind};
use kiln_builder::images::{ImageStore, normalize_tag};
use kiln_builder::snapshots::Snapshots;
use kiln_builder::usage::{self, Row};
use kiln_builder::volumes::{VolumeError, Volumes};

/// Volume name -> ids of the containers whose mounts use it.
fn volume_users(store: &Store) -> Result<HashMap<String, Vec<String>>> {
    let mut users: HashMap<String, Vec<String>> = HashMap::new();
    for c in Containers::open(store)?.list()? {
        for m in &c.config.mounts {
            if m.kind == MountKind::Volume {
                users
                    .entry(m.source.clone())
                    .or_default()
                    .push(c.id.clone());
            }
        }
    }
    Ok(users)
}

/// Gives container `config` its volumes, before it is created: an anonymous volume for
/// each of the image's `VOLUME`s no mount covers and for each `-v /path`, named volumes
/// created if missing, and each volume filled from the image on its first mount unless
/// its target is in `nocopy`. Returns the anonymous volumes made (to drop if the
/// container cannot be created).
pub fn attach_volumes(
    store: &Store,
    config: &mut kiln_builder::containers::ContainerConfig,
    image_volumes: &std::collections::BTreeSet<String>,
    image: &LayeredFs,
    nocopy: &[String],
) -> Result<Vec<String>> {
    let clean = |p: &str| {
        let t = p.trim_end_matches('/');
        if t.is_empty() {
            "/".to_string()
        } else {
            t.to_string()
        }
    };
    for v in image_volumes {
        let target = clean(v);
        if !config.mounts.iter().any(|m| clean(&m.target) == target) {
            config.mounts.push(kiln_builder::containers::MountConfig {
                kind: MountKind::Volume,
                source: String::new(),
                target,
                readonly: false,
                anonymous: true,
                size: None,
            });
        }
    }
    let vols = Volumes::open(store);
    let mut made = Vec::new();
    let result = (|| -> Result<()> {
        for m in config
            .mounts
            .iter_mut()
            .filter(|m| m.kind == MountKind::Volume)
        {
            if m.source.is_empty() {
                m.source = vols.create(None)?.name;
                made.push(m.source.clone());
            } else {
                vols.create(Some(&m.source))?;
            }
            if !nocopy.iter().any(|t| clean(t) == clean(&m.target)) {
                vols.populate_once(&m.source, image, &m.target)?;
            }
        }
        Ok(())
    })();
    match result {
        Ok(()) => Ok(made),
        Err(e) => {
            drop_volumes(store, &made);
            Err(e)
        }
    }
}

/// Removes the anonymous volumes [`attach_volumes`] made for a container that was not
/// created (best effort).
pub fn drop_volumes(store: &Store, names: &[String]) {
    let vols = Volumes::open(store);
    for n in names {
        let _ = vols.remove(n, &[]);
    }
}

/// Removes container `c` and, with `volumes` (`rm -v`, `--rm`), its anonymous volumes
/// that no other container uses. Named volumes always stay.
pub fn remove_container(
    store: &Store,
    containers: &Containers,
    c: &Container,
    force: bool,
    volumes: bool,
) -> kiln_builder::containers::Result<()> {
    containers.remove(&c.id, force)?;
    if !volumes {
        return Ok(());
    }
    let users = volume_users(store)
        .map_err(|e| kiln_builder::containers::ContainerError::Invalid(format!("{e:#}")))?;
    let vols = Volumes::open(store);
    for m in &c.config.mounts {
        if m.kind == MountKind::Volume && m.anonymous && !users.contains_key(&m.source) {
            match vols.remove(&m.source, &[]) {
                Ok(()) | Err(VolumeError::NotFound { .. }) => {}
                Err(e) => eprintln!("warning: container {}: {e}", c.name),
            }
        }
    }
    Ok(())
}

/// Asks `prompt [y/N] ` on stderr and reads the answer from stdin, unless `force`:
/// every prune command's confirmation (Docker's `PromptForConfirmation`). `prompt` is
/// Docker's text, its question included.
pub(crate) fn confirm(force: bool, prompt: &str) -> Result<bool> {
    if force {
        return Ok(true);
    }
    confirm_with(prompt, &mut std::io::stdin().lock(), &mut std::io::stderr())
}

/// [`confirm`] over any input and output: only `y` (or `yes`) proceeds; an empty
/// line or end of input (no terminal, `</dev/null`) is a no.
fn confirm_with(prompt: &str, input: &mut dyn BufRead, out: &mut dyn Write) -> Result<bool> {
    write!(out, "{prompt} [y/N] ")?;
    out.flush()?;
    let mut line = String::new();
    input.read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// Docker's prune warnings, each with its question.
pub(crate) mod warnings {
    /// `docker builder prune`.
    pub const BUILD_CACHE: &str =
        "WARNING! This will remove all dangling build cache. Are you sure you want to continue?";
    /// `docker builder prune --all`.
    pub const BUILD_CACHE_ALL: &str =
        "WARNING! This will remove all build cache. Are you sure you want to continue?";
    /// `docker container prune`.
    pub const CONTAINERS: &str =
        "WARNING! This will remove all stopped containers.\nAre you sure you want to continue?";
    /// `docker volume prune`.
    pub const VOLUMES: &str = "WARNING! This will remove anonymous local volumes not used by at least one container.\nAre you sure you want to continue?";
    /// `docker volume prune --all`.
    pub const VOLUMES_ALL: &str = "WARNING! This will remove all local volumes not used by at least one container.\nAre you sure you want to continue?";
    /// `docker image prune`.
    pub const IMAGES: &str =
        "WARNING! This will remove all dangling images.\nAre you sure you want to continue?";
    /// `docker image prune --all`.
    pub const IMAGES_ALL: &str = "WARNING! This will remove all images without at least one container associated to them.\nAre you sure you want to continue?";
}

/// `kiln volume create [--label K=V]... [NAME]`: prints the name.
pub fn volume_create(root: &Path, name: Option<&str>, labels: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let mut map = std::collections::BTreeMap::new();
    for l in labels {
        let (k, v) = l.split_once('=').unwrap_or((l, ""));
        map.insert(k.to_string(), v.to_string());
    }
    let v = Volumes::open(&store).create_with(name, map)?;
    println!("{}", v.name);
    Ok(ExitCode::SUCCESS)
}

/// `kiln volume ls [-q]`.
pub fn volume_ls(root: &Path, quiet: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let vols = Volumes::open(&store).list()?;
    if !quiet {
        println!("{:<10}VOLUME NAME", "DRIVER");
    }
    for v in vols {
        if quiet {
            println!("{}", v.name);
        } else {
            println!("{:<10}{}", "local", v.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln volume inspect NAME...`: a JSON array; a missing name fails the command after
/// the others are printed, as Docker.
pub fn volume_inspect(root: &Path, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let vols = Volumes::open(&store);
    let mut out = Vec::new();
    let mut failed = false;
    for n in names {
        match vols.get(n) {
            Ok(v) => out.push(v.inspect_json()),
            Err(VolumeError::NotFound { .. }) => {
                eprintln!("error: no such volume: {n}");
                failed = true;
            }
            Err(e) => return Err(e.into()),
        }
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `kiln volume rm [-f] NAME...`: prints each name removed; `-f` ignores missing ones
/// (a volume in use is refused even so, as in Docker).
pub fn volume_rm(root: &Path, force: bool, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let vols = Volumes::open(&store);
    let users = volume_users(&store)?;
    let mut failed = false;
    for n in names {
        let in_use = users.get(n).cloned().unwrap_or_default();
        match vols.remove(n, &in_use) {
            Ok(()) => println!("{n}"),
            Err(VolumeError::NotFound { .. }) if force => {}
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `kiln volume prune [-f] [-a]`: anonymous unused volumes, or all unused with `-a`.
pub fn volume_prune(root: &Path, force: bool, all: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let warning = if all {
        warnings::VOLUMES_ALL
    } else {
        warnings::VOLUMES
    };
    if !confirm(force, warning)? {
        return Ok(ExitCode::SUCCESS);
    }
    let in_use: HashSet<String> = volume_users(&store)?.into_keys().collect();
    let (removed, bytes) = Volumes::open(&store).prune(all, &in_use)?;
    if !removed.is_empty() {
        println!("Deleted Volumes:");
        for n in &removed {
            println!("{n}");
        }
        println!();
    }
    println!("Total reclaimed space: {}", human_size(bytes));
    Ok(ExitCode::SUCCESS)
}

/// The container's lower layers as one tree (snapshots unpacked if need be).
fn image_view(store: &Store, c: &Container) -> Result<LayeredFs> {
    let dirs = Snapshots::new(store)
        .chain(store, &c.config.layers)
        .with_context(|| format!("the image of container {}", c.name))?;
    Ok(LayeredFs::new(dirs, format!("the image of {}", c.name)))
}

/// Container paths that are not the container's own writes: its mount targets and the
/// mount points the runtime created for them and for `/etc/hosts`, `/etc/resolv.conf`,
/// ... (its stubs; Docker keeps those in a separate init layer), with everything below
/// them; and the directories that only hold such mount points (not themselves
/// reported, though the container may have written below them too).
fn excluded_paths(containers: &Containers, c: &Container) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let stubs = kiln_sandbox::Stubs::load(&containers.run_dir(&c.id).join("stubs.json"));
    let abs = |rel: &Path| Path::new("/").join(rel);
    let mut exclude: Vec<PathBuf> = c
        .config
        .mounts
        .iter()
        .map(|m| PathBuf::from(&m.target))
        .collect();
    let mut hide = Vec::new();
    for (rel, _) in &stubs.created {
        let is_parent = stubs
            .created
            .iter()
            .any(|(other, _)| other != rel && other.starts_with(rel));
        if is_parent {
            hide.push(abs(rel));
        } else {
            exclude.push(abs(rel));
        }
    }
    // Parents of the mount points that the image has: copied up to make the stubs.
    for target in exclude.clone() {
        let mut p = target.parent();
        while let Some(d) = p.filter(|d| *d != Path::new("/")) {
            hide.push(d.to_path_buf());
            p = d.parent();
        }
    }
    (exclude, hide)
}

/// `kiln diff CONTAINER`.
pub fn diff(root: &Path, container: &str) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?;
    let c = containers.get(container)?;
    let view = image_view(&store, &c)?;
    let upper = containers.upper_dir(&c.id);
    let (exclude, hide) = excluded_paths(&containers, &c);
    for change in changes::diff(&upper, &view, &exclude, &hide)? {
        println!("{change}");
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `kiln commit`.
pub struct CommitFlags {
    /// `--change`.
    pub changes: Vec<String>,
    /// `-m`.
    pub message: Option<String>,
    /// `-a`.
    pub author: Option<String>,
}

/// `kiln commit [OPTIONS] CONTAINER [NAME[:TAG]]`: prints `sha256:<image id>`.
pub fn commit_cmd(
    root: &Path,
    container: &str,
    name: Option<&str>,
    flags: CommitFlags,
) -> Result<ExitCode> {
    if let Some(n) = name {
        kiln_builder::remote::parse_name(n)
            .map_err(|reason| anyhow!("invalid reference format {n:?}: {reason}"))?;
    }
    let store = Store::open(root)?;
    let _lock = store.lock_shared()?;
    let containers = Containers::open(&store)?;
    let c = containers.get(container)?;
    let image = ImageStore::new(&store)
        .load(&c.config.manifest_digest, &Platform::host())
        .with_context(|| format!("the image of container {}", c.name))?;
    let p = &c.config.process;
    let mut config = image.config.config.clone();
    config.env = p.env.clone();
    config.cmd = Some(p.cmd.clone()).filter(|c| !c.is_empty());
    config.entrypoint = Some(p.entrypoint.clone()).filter(|e| !e.is_empty());
    config.working_dir = p.working_dir.clone();
    config.user = p.user.clone();
    let req = CommitRequest {
        upper: &containers.upper_dir(&c.id),
        image: &image,
        config,
        exclude: excluded_paths(&containers, &c).0,
        changes: flags.changes,
        comment: flags.message,
        author: flags.author,
        // Docker: the container's command.
        created_by: p.cmd.join(" "),
        compression: kiln_layer::Compression::default(),
    };
    let built = commit(&store, &req).with_context(|| format!("committing {}", c.name))?;
    if let Some(n) = name {
        store.tag_set(
            &normalize_tag(n),
            &TagRecord::new(built.manifest_digest.clone(), built.config_digest.clone()),
        )?;
    }
    println!("{}", built.config_digest);
    Ok(ExitCode::SUCCESS)
}

fn reclaimable(row: &Row, percent: bool) -> String {
    if percent && row.size > 0 {
        format!(
            "{} ({}%)",
            human_size(row.reclaimable),
            row.reclaimable * 100 / row.size
        )
    } else {
        human_size(row.reclaimable)
    }
}

/// `kiln system df [-v]`.
pub fn system_df(root: &Path, verbose: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let df = usage::system_df(&store)?;
    if verbose {
        print_df_verbose(&df);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16}{:<10}{:<10}{:<10}RECLAIMABLE",
        "TYPE", "TOTAL", "ACTIVE", "SIZE"
    );
    for (name, row, percent) in [
        ("Images", &df.images, true),
        ("Containers", &df.containers, true),
        ("Local Volumes", &df.volumes, true),
        ("Build Cache", &df.build_cache, false),
    ] {
        println!(
            "{name:<16}{:<10}{:<10}{:<10}{}",
            row.total,
            row.active,
            human_size(row.size),
            reclaimable(row, percent)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_df_verbose(df: &usage::SystemDf) {
    println!("Images space usage:\n");
    println!(
        "{:<40} {:<16} {:<14} {:<10} {:<13} {:<13} CONTAINERS",
        "REPOSITORY", "TAG", "IMAGE ID", "SIZE", "SHARED SIZE", "UNIQUE SIZE"
    );
    for img in &df.image_list {
        let id: String = img.id.hex().chars().take(12).collect();
        for t in &img.tags {
            let (repo, tag) = t.rsplit_once(':').unwrap_or((t, "<none>"));
            println!(
                "{repo:<40} {tag:<16} {id:<14} {:<10} {:<13} {:<13} {}",
                human_size(img.size),
                human_size(img.shared),
                human_size(img.size - img.shared),
                img.containers
            );
        }
    }
    println!("\nContainers space usage:\n");
    println!(
        "{:<14} {:<20} {:<10} {:<10} NAMES",
        "CONTAINER ID", "IMAGE", "SIZE", "STATUS"
    );
    for (c, size) in &df.container_list {
        println!(
            "{:<14} {:<20} {:<10} {:<10} {}",
            c.short_id(),
            c.config.image,
            human_size(*size),
            c.state.status.as_str(),
            c.name
        );
    }
    println!("\nLocal Volumes space usage:\n");
    println!("{:<66} {:<6} SIZE", "VOLUME NAME", "LINKS");
    for (name, links, size) in &df.volume_list {
        println!("{name:<66} {links:<6} {}", human_size(*size));
    }
    println!("\nBuild cache usage: {}", human_size(df.build_cache.size));
    for (label, bytes) in &df.build_cache_areas {
        println!("  {:<16}{}", format!("{label}:"), human_size(*bytes));
    }
}

/// `kiln rmi [-f] IMAGE...`: untags; when no tag is left on the image, deletes its
/// manifest and config and the layers and snapshots that nothing else (another image,
/// a cache record, a container) references. Refuses an image a container uses unless
/// `-f` (which then only untags, as Docker leaves such an image in place).
pub fn rmi(root: &Path, force: bool, images: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?.list()?;
    let mut failed = false;
    for name in images {
        if let Err(e) = rmi_one(&store, &containers, force, name) {
            eprintln!("error: {e:#}");
            failed = true;
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn rmi_one(store: &Store, containers: &[Container], force: bool, name: &str) -> Result<()> {
    let tags = store.tags()?;
    let wanted = normalize_tag(name);
    let prefix = name.trim_start_matches("sha256:");
    let by_tag = tags.iter().find(|(t, _)| *t == wanted);
    let (rec, untag): (TagRecord, Vec<String>) = match by_tag {
        Some((t, r)) => (r.clone(), vec![t.clone()]),
        None => {
            let hit = (prefix.len() >= 4)
                .then(|| {
                    tags.iter()
                        .find(|(_, r)| r.config.hex().starts_with(prefix))
                })
                .flatten();
            let (_, r) = hit.ok_or_else(|| {
                anyhow!(
                    "No such image: {name}{}",
                    crate::commands::did_you_mean(store, name)
                )
            })?;
            let all: Vec<String> = tags
                .iter()
                .filter(|(_, o)| o.manifest == r.manifest)
                .map(|(t, _)| t.clone())
                .collect();
            if all.len() > 1 && !force {
                bail!(
                    "conflict: unable to delete {} (must be forced) - image is referenced in multiple repositories",
                    &r.config.hex()[..12]
                );
            }
            (r.clone(), all)
        }
    };
    let users: Vec<&Container> = containers
        .iter()
        .filter(|c| c.image_id == rec.config.as_str())
        .collect();
    let last_tag = tags
        .iter()
        .filter(|(t, r)| r.manifest == rec.manifest && !untag.contains(t))
        .count()
        == 0;
    if let Some(c) = users.first().filter(|_| last_tag && !force) {
        bail!(
            "conflict: unable to remove repository reference \"{name}\" (must force) - container {} is using its referenced image {}",
            c.short_id(),
            &rec.config.hex()[..12]
        );
    }
    for t in &untag {
        store.tag_remove(t)?;
        println!("Untagged: {t}");
    }
    if !last_tag || !users.is_empty() {
        return Ok(());
    }
    // Nothing names the image any more: delete what only it used.
    let Some(_lock) = store.try_lock_exclusive()? else {
        eprintln!(
            "warning: other kiln processes use the store: image {} untagged, its blobs are left for garbage collection",
            rec.config
        );
        return Ok(());
    };
    delete_unreferenced(store, &rec, containers)?;
    Ok(())
}

/// Deletes the blobs and snapshots of image `rec` that no tagged image, cache record or
/// container references. Prints `Deleted: DIGEST` for each blob.
fn delete_unreferenced(store: &Store, rec: &TagRecord, containers: &[Container]) -> Result<()> {
    let info = ImageStore::new(store).load(rec.manifest.as_str(), &Platform::host());
    let mut blobs = vec![rec.manifest.clone(), rec.config.clone()];
    let mut diff_ids = Vec::new();
    if let Ok(info) = &info {
        blobs.push(info.manifest_digest.clone());
        blobs.extend(info.layers.iter().map(|l| l.digest.clone()));
        diff_ids.extend(info.layers.iter().map(|l| l.diff_id.clone()));
    }
    blobs.sort();
    blobs.dedup();
    let mut keep: HashSet<String> = usage::cache_references(store)?;
    for img in usage::tagged_images(store)? {
        keep.extend(img.blobs.iter().map(|d| d.to_string()));
        keep.extend(img.diff_ids.iter().map(|d| d.to_string()));
    }
    for c in containers {
        for l in &c.config.layers {
            keep.insert(l.digest.to_string());
            keep.insert(l.diff_id.to_string());
        }
    }
    for d in &blobs {
        if !keep.contains(d.as_str()) && store.delete_blob(d)? {
            println!("Deleted: {d}");
        }
    }
    let snapshots = Snapshots::new(store);
    for d in &diff_ids {
        let dir = snapshots.path(d);
        if !keep.contains(d.as_str()) && dir.is_dir() {
            // Renamed into tmp/ first, so that a kill leaves no half snapshot in place.
            let trash = store
                .tmp_dir()
                .join(format!("{}.rmi-{}", Store::writer(), d.hex()));
            std::fs::rename(&dir, &trash)
                .with_context(|| format!("removing snapshot {}", dir.display()))?;
            kiln_cache::remove_tree(&trash)
                .with_context(|| format!("removing {}", trash.display()))?;
        }
    }
    Ok(())
}

/// `kiln image prune [-a] [-f]`: kiln keeps no untagged images, so without `-a` there is
/// nothing to prune; with `-a`, every image no container uses is removed as `rmi` does.
pub fn image_prune(root: &Path, all: bool, force: bool) -> Result<ExitCode> {
    let warning = if all {
        warnings::IMAGES_ALL
    } else {
        warnings::IMAGES
    };
    if !confirm(force, warning)? {
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(root)?;
    let containers = Containers::open(&store)?.list()?;
    let before = store.disk_usage()?.total().bytes;
    if all {
        let used: HashSet<&str> = containers.iter().map(|c| c.image_id.as_str()).collect();
        let unused: Vec<String> = store
            .tags()?
            .into_iter()
            .filter(|(_, r)| !used.contains(r.config.as_str()))
            .map(|(t, _)| t)
            .collect();
        for t in unused {
            rmi_one(&store, &containers, false, &t)?;
        }
    }
    let after = store.disk_usage()?.total().bytes;
    println!(
        "Total reclaimed space: {}",
        human_size(before.saturating_sub(after))
    );
    Ok(ExitCode::SUCCESS)
}

fn short_key(key: &str) -> &str {
    let hex = key.strip_prefix("sha256:").unwrap_or(key);
    &hex[..hex.len().min(12)]
}

fn last_used(t: std::time::SystemTime) -> String {
    let age = std::time::SystemTime::now()
        .duration_since(t)
        .unwrap_or_default();
    let age = chrono::Duration::from_std(age).unwrap_or_default();
    format!("{} ago", crate::container_commands::human_duration(age))
}

/// `kiln du [--verbose]`: the build cache per record (most recently used first), then
/// the totals and the Build Cache row of `system df` by kind.
pub fn du(root: &Path, verbose: bool) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let u = usage::build_cache_usage(&store)?;
    if verbose {
        for r in &u.records {
            println!("ID:\t\t{}", r.key);
            println!("Reclaimable:\t{}", r.reclaimable);
            println!("Shared:\t\t{}", r.shared);
            println!("Size:\t\t{}", human_size(r.size));
            if let Some(d) = &r.description {
                println!("Description:\t{d}");
            }
            if let Some(why) = &r.in_use {
                println!("In use:\t\t{why}");
            }
            println!("Last used:\t{}", last_used(r.last_used));
            println!();
        }
    } else {
        println!(
            "{:<14}{:<13}{:<12}{:<26}DESCRIPTION",
            "ID", "RECLAIMABLE", "SIZE", "LAST ACCESSED"
        );
        for r in &u.records {
            println!(
                "{:<14}{:<13}{:<12}{:<26}{}",
                short_key(&r.key),
                r.reclaimable,
                human_size(r.size),
                last_used(r.last_used),
                r.description.as_deref().unwrap_or("")
            );
        }
    }
    println!("Shared:\t\t{}", human_size(u.shared));
    println!("Private:\t{}", human_size(u.private));
    println!("Reclaimable:\t{}", human_size(u.reclaimable));
    println!("Total:\t\t{}", human_size(u.total));
    println!();
    println!("Build cache by kind:");
    for (label, bytes) in &u.areas {
        println!("  {:<16}{}", format!("{label}:"), human_size(*bytes));
    }
    Ok(ExitCode::SUCCESS)
}

/// Flags of `kiln prune`.
pub struct PruneFlags {
    /// `--all`.
    pub all: bool,
    /// `--filter`.
    pub filters: Vec<String>,
    /// `--max-used-space`.
    pub max_used_space: Option<String>,
    /// `--min-free-space`.
    pub min_free_space: Option<String>,
    /// `--reserved-space`.
    pub reserved_space: Option<String>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--verbose`.
    pub verbose: bool,
    /// `--force`: no confirmation.
    pub force: bool,
}

/// `kiln prune`: Docker's `builder prune` output (`Deleted build cache objects:`, one id a
/// line, `Total reclaimed space:`); `--dry-run` says what would go and why.
pub fn prune(root: &Path, flags: PruneFlags) -> Result<ExitCode> {
    let mut opts = usage::PruneOptions {
        all: flags.all,
        dry_run: flags.dry_run,
        ..Default::default()
    };
    for f in &flags.filters {
        match f.split_once('=') {
            Some(("until", d)) => {
                opts.until =
                    Some(humantime::parse_duration(d).map_err(|e| {
                        anyhow!("invalid filter {f:?}: {e} (expected e.g. until=24h)")
                    })?)
            }
            _ => bail!("invalid filter {f:?}: kiln prune supports until=DURATION"),
        }
    }
    let size = |flag: &str, v: &Option<String>| -> Result<Option<kiln_cache::SizeSpec>> {
        v.as_deref()
            .map(|s| kiln_cache::SizeSpec::parse(s).with_context(|| format!("--{flag}")))
            .transpose()
    };
    opts.max_used_space = size("max-used-space", &flags.max_used_space)?;
    opts.min_free_space = size("min-free-space", &flags.min_free_space)?;
    opts.reserved_space = size("reserved-space", &flags.reserved_space)?;
    // A dry run removes nothing: nothing to confirm.
    let warning = if flags.all {
        warnings::BUILD_CACHE_ALL
    } else {
        warnings::BUILD_CACHE
    };
    if !flags.dry_run && !confirm(flags.force, warning)? {
        return Ok(ExitCode::SUCCESS);
    }
    let store = Store::open(root)?;
    let r = usage::prune(&store, &opts)?;
    if let Some((budget, used, excess)) = r.budget {
        if excess == 0 {
            println!(
                "Within budget: the store uses {} (max {}), at least {} free (min {}): nothing to prune",
                human_size(used),
                human_size(budget.max_used),
                human_size(store.disk_space()?.available),
                human_size(budget.min_free)
            );
        } else if flags.verbose || flags.dry_run {
            println!(
                "Over budget by {}: the store uses {} (max {}, min free {})",
                human_size(excess),
                human_size(used),
                human_size(budget.max_used),
                human_size(budget.min_free)
            );
        }
    }
    if flags.dry_run {
        println!("Would delete build cache objects:");
        for (rec, size, why) in &r.plan.records {
            println!(
                "{:<14}{:<12}{:<40}{}",
                short_key(&rec.key),
                human_size(*size),
                why.to_string(),
                rec.description.as_deref().unwrap_or("")
            );
        }
    } else if !r.plan.records.is_empty() {
        println!("Deleted build cache objects:");
        for (rec, _, _) in &r.plan.records {
            println!("{}", short_key(&rec.key));
        }
        println!();
    }
    if flags.verbose || flags.dry_run {
        for (x, size, why) in &r.plan.refs {
            println!(
                "{} {x} ({}): {why}",
                if flags.dry_run {
                    "would remove"
                } else {
                    "removed"
                },
                human_size(*size)
            );
        }
    }
    if flags.verbose {
        for (key, why) in &r.kept_in_use {
            println!("kept {}: {why}", short_key(key));
        }
        println!("GC lock held {} ms", r.lock_held.as_millis());
    }
    if flags.dry_run {
        println!("Total reclaimable space: {}", human_size(r.plan.freed));
    } else {
        println!("Total reclaimed space: {}", human_size(r.plan.freed));
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(prompt: &str, answer: &str) -> (bool, String) {
        let mut out = Vec::new();
        let yes = confirm_with(prompt, &mut answer.as_bytes(), &mut out).unwrap();
        (yes, String::from_utf8(out).unwrap())
    }

    #[test]
    fn confirm_asks_dockers_question_and_takes_only_yes() {
        let (yes, shown) = ask(warnings::BUILD_CACHE, "y\n");
        assert!(yes);
        assert_eq!(
            shown,
            "WARNING! This will remove all dangling build cache. Are you sure you want to continue? [y/N] "
        );
        for no in ["", "\n", "n\n", "N\n", "no\n", "maybe\n"] {
            assert!(!ask(warnings::CONTAINERS, no).0, "{no:?}");
        }
        assert!(ask(warnings::CONTAINERS, "yes\n").0);
        assert!(ask(warnings::CONTAINERS, " Y \n").0);
        assert!(confirm(true, warnings::BUILD_CACHE_ALL).unwrap());
    }
}
