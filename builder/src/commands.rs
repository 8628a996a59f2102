//! `kiln images`, `kiln inspect` and `kiln history`, with Docker's columns and flags.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, anyhow};
use kiln_cache::{Digest, Store};
use kiln_ops::Platform;

use kiln_builder::format::Record;
use kiln_builder::format::Template;
use kiln_builder::images::{ImageInfo, ImageStore, normalize_tag};
use kiln_builder::report::human_bytes;

fn short_id(digest: &str, no_trunc: bool) -> String {
    if no_trunc {
        digest.to_string()
    } else {
        digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect()
    }
}

/// ` (did you mean "demo:latest"?)` when the store has a tag close to `name` (a typo),
/// else nothing: the end of every unknown-image error.
pub fn did_you_mean(store: &Store, name: &str) -> String {
    let tags = store.tags().unwrap_or_default();
    match kiln_builder::images::closest_tag(name, tags.iter().map(|(t, _)| t.as_str())) {
        Some(t) => format!(" (did you mean {t:?}?)"),
        None => String::new(),
    }
}

/// Finds an image by tag, id prefix or manifest digest; returns its tags too.
fn find(store: &Store, name: &str) -> Result<(ImageInfo, Vec<String>)> {
    let tags = store.tags()?;
    let images = ImageStore::new(store);
    let wanted = normalize_tag(name);
    let hit = tags.iter().find(|(t, _)| *t == wanted).or_else(|| {
        let prefix = name.trim_start_matches("sha256:");
        (prefix.len() >= 4).then_some(())?;
        tags.iter().find(|(_, r)| {
            r.config.hex().starts_with(prefix) || r.manifest.hex().starts_with(prefix)
        })
    });
    let (_, rec) =
        hit.ok_or_else(|| anyhow!("no such image: {name}{}", did_you_mean(store, name)))?;
    let info = images.load(rec.manifest.as_str(), &Platform::host())?;
    let names = tags
        .iter()
        .filter(|(_, r)| r.manifest == rec.manifest)
        .map(|(t, _)| t.clone())
        .collect();
    Ok((info, names))
}

/// `docker images`'s CREATED: go-units' duration and "ago".
fn since(created: Option<chrono::DateTime<chrono::Utc>>) -> String {
    match created {
        Some(c) => format!(
            "{} ago",
            crate::container_commands::human_duration(
                (chrono::Utc::now() - c).max(chrono::Duration::zero())
            )
        ),
        None => "N/A".to_string(),
    }
}

/// `kiln images [-q] [--no-trunc] [--format TEMPLATE]`: Docker's default table
/// (`REPOSITORY TAG IMAGE ID CREATED SIZE`) or a template (see `kiln ps --format`).
/// `kiln images [REPOSITORY[:TAG]] [-q] [--no-trunc] [--format F]`.
pub fn images(
    root: &Path,
    reference: Option<&str>,
    quiet: bool,
    no_trunc: bool,
    format: Option<&str>,
) -> Result<ExitCode> {
    let kind = &kiln_builder::format::IMAGES;
    let format = match (format, quiet) {
        (Some(f), false) => f,
        (Some(_), true) => {
            eprintln!(
                "WARNING: Ignoring custom format, because both --format and --quiet are set."
            );
            "{{.ID}}"
        }
        (None, true) => "{{.ID}}",
        (None, false) => "table",
    };
    let template = match Template::parse(format, kind) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    // Docker's reference filter: the repository (and the tag, if given) matched as
    // `path.Match` patterns.
    let wanted = reference.map(split_tag);
    let glob = |pattern: &str, name: &str| -> Result<bool> {
        kiln_fs::glob::matches(pattern, name).map_err(|e| anyhow!(e))
    };
    let store = Store::open(root)?;
    let imgs = ImageStore::new(&store);
    let mut records = Vec::new();
    for (name, rec) in store.tags()? {
        let (repo, tag) = split_tag(&name);
        let tag = tag.unwrap_or("<none>");
        if let Some((repo_pattern, tag_pattern)) = wanted {
            let tag_ok = match tag_pattern {
                Some(t) => glob(t, tag)?,
                None => true,
            };
            if !(tag_ok && glob(repo_pattern, repo)?) {
                continue;
            }
        }
        let (size, created) = match imgs.load(rec.manifest.as_str(), &Platform::host()) {
            Ok(info) => (
                info.layers.iter().map(|l| l.size).sum::<u64>(),
                info.config.created,
            ),
            Err(_) => (0, None),
        };
        let mut r = Record::default();
        r.set("Repository", repo)
            .set("Tag", tag)
            .set("ID", short_id(rec.config.as_str(), no_trunc))
            .set("Digest", rec.manifest.as_str())
            .set("CreatedSince", since(created))
            .set(
                "CreatedAt",
                created.map_or_else(String::new, |c| {
                    c.format("%Y-%m-%d %H:%M:%S +0000 UTC").to_string()
                }),
            )
            .set("Size", crate::container_commands::docker_size(size));
        records.push(r);
    }
    print!("{}", template.render(kind, &records));
    Ok(ExitCode::SUCCESS)
}

/// A reference's repository and tag, if it has one (a `:` after the last `/`).
fn split_tag(name: &str) -> (&str, Option<&str>) {
    name.rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or((name, None), |(repo, tag)| (repo, Some(tag)))
}

/// `kiln image inspect NAME...`: images only (a container's name is no image), as
/// `docker image inspect`.
pub fn inspect_images(root: &Path, names: &[String]) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let mut out = Vec::new();
    for name in names {
        let image = inspect_image(&store, name)
            .map_err(|_| anyhow!("No such image: {name}{}", did_you_mean(&store, name)))?;
        out.push(image);
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

/// An image as `docker inspect` shows it.
pub fn inspect_image(store: &Store, name: &str) -> Result<serde_json::Value> {
    let (info, tags) = find(store, name)?;
    let config: serde_json::Value = serde_json::from_slice(&store.read_blob(&info.config_digest)?)?;
    Ok(serde_json::json!({
        "Id": info.config_digest,
        "RepoTags": tags,
        "Digest": info.manifest_digest,
        "Created": config.get("created"),
        "Author": config.get("author"),
        "Architecture": config.get("architecture"),
        "Os": config.get("os"),
        "Config": config.get("config"),
        "Size": info.layers.iter().map(|l| l.size).sum::<u64>(),
        "RootFS": { "Type": "layers", "Layers": info.config.diff_ids },
        "Layers": info.layers.iter().map(|l| &l.digest).collect::<Vec<_>>(),
        "History": config.get("history"),
    }))
}

/// Flags of `kiln history`.
pub struct HistoryFlags {
    /// `-H`.
    pub human: bool,
    /// `--no-trunc`.
    pub no_trunc: bool,
    /// `-q`.
    pub quiet: bool,
    /// `--format`.
    pub format: Option<String>,
}

/// `kiln history IMAGE`: newest first, as `docker history` prints it.
pub fn history(root: &Path, name: &str, flags: HistoryFlags) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let (info, _) = find(&store, name)?;
    let mut layers = info.layers.iter();
    let mut rows = Vec::new();
    for h in &info.config.history {
        let size = if h.empty_layer {
            0
        } else {
            layers.next().map(|l| l.size).unwrap_or(0)
        };
        rows.push((h, size));
    }
    let total = rows.len();
    if !flags.quiet && flags.format.is_none() {
        println!(
            "{:<14} {:<18} {:<45} {:<10} COMMENT",
            "IMAGE", "CREATED", "CREATED BY", "SIZE"
        );
    }
    for (i, (h, size)) in rows.into_iter().rev().enumerate() {
        // Only the newest entry is the image itself; the others are `<missing>`, as for
        // images built by BuildKit.
        let id = if i == 0 {
            short_id(info.config_digest.as_str(), flags.no_trunc)
        } else {
            "<missing>".to_string()
        };
        if flags.quiet {
            println!("{id}");
            continue;
        }
        let created_at = h.created.map(|c| c.to_rfc3339()).unwrap_or_default();
        let created = if flags.human {
            since(h.created)
        } else {
            created_at.clone()
        };
        let size_s = if flags.human {
            human_bytes(size)
        } else {
            size.to_string()
        };
        let mut by = h.created_by.clone();
        if !flags.no_trunc && by.chars().count() > 45 {
            by = by.chars().take(44).collect::<String>() + "…";
        }
        let comment = h.comment.clone().unwrap_or_default();
        match &flags.format {
            Some(f) => println!(
                "{}",
                f.replace("{{.ID}}", &id)
                    .replace("{{.CreatedBy}}", &by)
                    .replace("{{.CreatedAt}}", &created_at)
                    .replace("{{.CreatedSince}}", &since(h.created))
                    .replace("{{.Size}}", &size_s)
                    .replace("{{.Comment}}", &comment)
                    .replace("\\t", "\t")
            ),
            None => println!("{id:<14} {created:<18} {by:<45} {size_s:<10} {comment}"),
        }
    }
    let _ = total;
    Ok(ExitCode::SUCCESS)
}

/// The display of `kiln pull` and `kiln push`: the build's, showing blob events.
fn blob_display(quiet: bool) -> kiln_builder::progress::Progress {
    use kiln_builder::progress::{Progress, ProgressMode};
    let mode = if quiet {
        ProgressMode::Quiet
    } else {
        ProgressMode::Auto
    };
    Progress::new(mode, std::collections::HashMap::new())
}

/// `kiln pull REF`: pulls into the store and tags it; prints the manifest digest.
pub fn pull(
    root: &Path,
    registry: kiln_builder::remote::RegistrySettings,
    reference: &str,
    platform: &Platform,
    quiet: bool,
) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let _lock = store.lock_shared()?;
    let remote = kiln_builder::remote::Remote::new(registry);
    let progress = blob_display(quiet);
    let digest = remote.pull(
        &store,
        reference,
        platform,
        &kiln_builder::remote::BlobReporter::new(&progress, None),
    )?;
    if !quiet {
        eprintln!("pulled {reference}");
    }
    println!("{digest}");
    Ok(ExitCode::SUCCESS)
}

/// `kiln push NAME[:TAG]`: prints the pushed manifest digest.
pub fn push(
    root: &Path,
    registry: kiln_builder::remote::RegistrySettings,
    name: &str,
    docker_format: bool,
    quiet: bool,
) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let _lock = store.lock_shared()?;
    let manifest = store
        .tag_get(&normalize_tag(name))?
        .map(|rec| Digest::parse(rec.manifest.as_str()))
        .transpose()?;
    let lease = match &manifest {
        Some(m) => Some(kiln_builder::recreate::lease_image(
            &store,
            m,
            &format!("push of {name}"),
        )?),
        None => None,
    };
    let remote = kiln_builder::remote::Remote::new(registry);
    let progress = blob_display(quiet);
    let r = remote.push(
        &store,
        name,
        docker_format,
        &kiln_builder::remote::BlobReporter::new(&progress, None),
    )?;
    if !quiet {
        eprintln!(
            "pushed {name}: {} bytes uploaded, {} blobs uploaded, {} skipped (already there), {} mounted",
            r.bytes_uploaded, r.blobs_uploaded, r.blobs_skipped, r.blobs_mounted
        );
    }
    println!("{}", r.digest);
    // Layers written again from their snapshots for the push are dropped again.
    drop(lease);
    if let Some(m) = &manifest {
        compact_after(&store, m);
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln tag SOURCE TARGET`.
pub fn tag(root: &Path, source: &str, target: &str) -> Result<ExitCode> {
    let store = Store::open(root)?;
    let _lock = store.lock_shared()?;
    let rec = store
        .tag_get(&normalize_tag(source))?
        .ok_or_else(|| anyhow!("no such image: {source}{}", did_you_mean(&store, source)))?;
    kiln_builder::remote::parse_name(target)
        .map_err(|reason| anyhow!("{target:?} is not a valid repository/tag: {reason}"))?;
    store.tag_set(
        &normalize_tag(target),
        &kiln_cache::TagRecord::new(rec.manifest, rec.config),
    )?;
    Ok(ExitCode::SUCCESS)
}

/// `kiln login`: checks the credentials against the registry, then saves them.
pub fn login(
    registry: kiln_builder::remote::RegistrySettings,
    server: &str,
    username: Option<String>,
    password: Option<String>,
    password_stdin: bool,
) -> Result<ExitCode> {
    use std::io::BufRead;
    let stdin = std::io::stdin();
    let read_line = |prompt: &str| -> Result<String> {
        eprint!("{prompt}");
        let mut s = String::new();
        stdin.lock().read_line(&mut s)?;
        Ok(s.trim_end_matches(['\n', '\r']).to_string())
    };
    let username = match username {
        Some(u) => u,
        None if password_stdin => anyhow::bail!("--password-stdin needs --username"),
        None => read_line("Username: ")?,
    };
    let password = match (password, password_stdin) {
        (Some(_), true) => anyhow::bail!("--password and --password-stdin are exclusive"),
        (Some(p), false) => p,
        (None, true) => {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
            s.trim_end_matches(['\n', '\r']).to_string()
        }
        (None, false) => read_line("Password: ")?,
    };
    let remote = kiln_builder::remote::Remote::new(registry);
    remote.client()?.check_login(server, &username, &password)?;
    let path = kiln_registry::credentials::save(None, server, &username, &password)?;
    eprintln!("Login Succeeded (credentials saved in {})", path.display());
    Ok(ExitCode::SUCCESS)
}

/// `kiln logout`.
pub fn logout(server: &str) -> Result<ExitCode> {
    if kiln_registry::credentials::remove(None, server)? {
        eprintln!("Removed login credentials for {server}");
    } else {
        eprintln!("Not logged in to {server}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The store's manifest digest of an image named by tag or id, and the tags to save it
/// with: the tag it was named by, none when named by id (as `docker save` does).
fn save_item(store: &Store, name: &str) -> Result<kiln_builder::archive::SaveItem> {
    let tags = store.tags()?;
    let wanted = normalize_tag(name);
    if let Some((t, rec)) = tags.iter().find(|(t, _)| *t == wanted) {
        return Ok(kiln_builder::archive::SaveItem {
            manifest: rec.manifest.clone(),
            tags: vec![t.clone()],
        });
    }
    let prefix = name.trim_start_matches("sha256:");
    let hit = (prefix.len() >= 4)
        .then(|| {
            tags.iter().find(|(_, r)| {
                r.config.hex().starts_with(prefix) || r.manifest.hex().starts_with(prefix)
            })
        })
        .flatten();
    match hit {
        Some((_, rec)) => Ok(kiln_builder::archive::SaveItem {
            manifest: rec.manifest.clone(),
            tags: Vec::new(),
        }),
        None => Err(anyhow!(
            "no such image: {name}{}",
            did_you_mean(store, name)
        )),
    }
}

/// `kiln save [-o FILE] [--format docker|oci] IMAGE...`.
pub fn save(
    root: &Path,
    registry: kiln_builder::remote::RegistrySettings,
    output: Option<&Path>,
    format: &str,
    names: &[String],
) -> Result<ExitCode> {
    use kiln_builder::archive::{ArchiveFormat, save};
    use std::io::IsTerminal;
    let format = if format == "oci" {
        ArchiveFormat::Oci
    } else {
        ArchiveFormat::Docker
    };
    if output.is_none() && std::io::stdout().is_terminal() {
        return Err(anyhow!(
            "cowardly refusing to save to a terminal. Use the -o flag or redirect"
        ));
    }
    let store = Store::open(root)?;
    // No collection while the archive is written.
    let _lock = store.lock_shared()?;
    let mut items: Vec<kiln_builder::archive::SaveItem> = Vec::new();
    for name in names {
        let item = save_item(&store, name)?;
        // `save app:1 app:1` or a tag and the id of the same image: one entry.
        match items.iter_mut().find(|i| i.manifest == item.manifest) {
            Some(i) => {
                for t in item.tags {
                    if !i.tags.contains(&t) {
                        i.tags.push(t);
                    }
                }
            }
            None => items.push(item),
        }
    }
    let leases = items
        .iter()
        .map(|i| kiln_builder::recreate::lease_image(&store, &i.manifest, "save"))
        .collect::<Result<Vec<_>, _>>()?;
    // Layers of a registry base a build never needed (kept lazy) are fetched now.
    let remote = std::sync::Arc::new(kiln_builder::remote::Remote::new(registry));
    kiln_builder::archive::fetch_layers(&store, &items, remote)?;
    match output {
        Some(path) => save(&store, &items, format, path)?,
        None => {
            // The exporters write a file and rename it: a temporary one in the store,
            // then copied out.
            let dir = tempfile::tempdir_in(store.tmp_dir())?;
            let path = dir.path().join("archive.tar");
            save(&store, &items, format, &path)?;
            let mut f = std::fs::File::open(&path)?;
            let mut out = std::io::stdout().lock();
            std::io::copy(&mut f, &mut out)?;
            std::io::Write::flush(&mut out)?;
        }
    }
    // Layers written again from their snapshots for the archive are dropped again.
    drop(leases);
    for item in &items {
        compact_after(&store, &item.manifest);
    }
    Ok(ExitCode::SUCCESS)
}

/// Drops again the blobs of image `manifest` that a push or a save wrote again from
/// their snapshots; the command's work is done, so a failure is only a warning.
fn compact_after(store: &Store, manifest: &Digest) {
    if let Err(e) = kiln_builder::recreate::compact_image(store, manifest) {
        eprintln!(
            "warning: keeping the compressed copies of unpacked layers: {}",
            kiln_solver::error_chain(&e)
        );
    }
}

/// `kiln load [-i FILE] [-q]`: Docker's `Loaded image: NAME:TAG` lines (`Loaded image
/// ID: sha256:...` for an unnamed image).
pub fn load(root: &Path, input: Option<&Path>, quiet: bool) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let store = Store::open(root)?;
    // No collection between writing a blob and the tag that keeps it.
    let _lock = store.lock_shared()?;
    let loaded = match input {
        Some(path) => {
            let f = std::fs::File::open(path)
                .map_err(|e| anyhow!("opening {}: {e}", path.display()))?;
            kiln_builder::archive::load(&store, std::io::BufReader::new(f))
                .map_err(|e| anyhow!("loading {}: {e}", path.display()))?
        }
        None => {
            if std::io::stdin().is_terminal() {
                return Err(anyhow!(
                    "requested load from stdin, but stdin is empty (use -i FILE or a pipe)"
                ));
            }
            kiln_builder::archive::load(&store, std::io::stdin().lock())?
        }
    };
    if !quiet {
        for image in &loaded {
            if image.tags.is_empty() {
                println!("Loaded image ID: {}", image.config);
            }
            for t in &image.tags {
                println!("Loaded image: {t}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_cache::TagRecord;

    /// Regression: `kiln tag` stored any name; only `kiln push` refused bad ones.
    #[test]
    fn tag_refuses_bad_names_as_docker() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = store.put_blob(b"{}").unwrap();
        store
            .tag_set("app:1", &TagRecord::new(d.clone(), d))
            .unwrap();
        let err = tag(dir.path(), "app:1", "Bad:Tag:x")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "\"Bad:Tag:x\" is not a valid repository/tag: invalid reference format: \
             repository name (library/Bad) must be lowercase"
        );
        tag(dir.path(), "app:1", "app:2").unwrap();
        let names: Vec<String> = store.tags().unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["app:1", "app:2"]);
    }
}
